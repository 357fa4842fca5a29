"""Multi-turn chat: seconds per turn when later turns reuse the language model's cache of the earlier ones
(`videollamb_hf.chat.ChatSession`, what `videollamb-hf chat` and the demo do) vs re-running the whole conversation
every turn (the original's CLI, and `answer_from_features`), same model, same conversation, in one run.

    python benchmarks/bench_chat.py [--turns 6] [--hidden 256] [--layers 4] [--max-new-tokens 16] [--json]

The video takes the released model's 1,152 slots (8 frames x 12 x 12 pooled patches); the towers are tiny (the
video is encoded once in both cases and not timed), the LLaMA is random with `--hidden` / `--layers` (CPU-sized, not
7B). Prints each turn's prompt length, the tokens the reusing session ran, both times and their ratio, and checks
that both give the same answer.
"""

import argparse
import json
import tempfile
import time

import torch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)

    from videollamb_hf.chat import ChatSession, prompt_ids
    from videollamb_hf.modeling_videollamb import VideoLlambForConditionalGeneration
    from videollamb_hf.testing_utils import TINY_TEXT, TINY_TOWER, get_tiny_config, get_tiny_processor

    processor = get_tiny_processor(tempfile.mkdtemp(prefix="bench-chat-"))
    processor.video_seq_length = 1152  # the released model's: 8 frames x 144 pooled patches
    tower = dict(TINY_TOWER, image_size=48)  # a 12 x 12 patch grid, kept at 12 x 12 by the pooling
    text = dict(TINY_TEXT, vocab_size=len(processor.tokenizer), pad_token_id=processor.tokenizer.pad_token_id,
                hidden_size=args.hidden, intermediate_size=args.hidden * 8 // 3, num_hidden_layers=args.layers,
                num_attention_heads=max(4, args.hidden // 64), num_key_value_heads=max(4, args.hidden // 64),
                max_position_embeddings=4096)  # fmt: skip
    config = get_tiny_config(text_config=text, vision_config=tower,
                             image_config=dict(tower, model_type="clip_vision_model"), pooled_grid_size=12,
                             video_token_id=processor.video_token_id, image_token_id=processor.image_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = VideoLlambForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    assert config.video_seq_length == 1152, config.video_seq_length
    with torch.no_grad():
        features = model.get_video_features(torch.randn(1, 8, 3, 48, 48))
    generate = {"max_new_tokens": args.max_new_tokens, "do_sample": False, "min_new_tokens": args.max_new_tokens}
    questions = ["What happens in the video?", "And after that?", "Who is in it?", "What colour is the car?",
                 "Where does it take place?", "How does it end?", "Anything unusual?", "Summarise it."]  # fmt: skip
    session = ChatSession(model, processor, features)
    history, rows = [], []
    for turn in range(args.turns):
        content = [{"type": "text", "text": questions[turn % len(questions)]}]
        if turn == 0:
            content.insert(0, {"type": "video"})
        history.append({"role": "user", "content": content})
        ids = torch.tensor([prompt_ids(processor, history)])
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), video_features=features,
                                 **generate)  # fmt: skip
        fresh = time.perf_counter() - start
        fresh_answer = processor.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
        start = time.perf_counter()
        answer = session.ask(history, generate)
        reused = time.perf_counter() - start
        rows.append({"turn": turn + 1, "prompt_tokens": ids.shape[1], "tokens_run": ids.shape[1] - session.reused,
                     "fresh_s": round(fresh, 3), "reuse_s": round(reused, 3), "speedup": round(fresh / reused, 2),
                     "same_answer": answer == fresh_answer})  # fmt: skip
        history.append({"role": "assistant", "content": fresh_answer})
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"LLaMA hidden {args.hidden}, {args.layers} layers; {args.max_new_tokens} new tokens per turn; 1,152 slots")
    print(
        "| turn | prompt tokens | tokens run (reuse) | whole conversation s | reusing the cache s | speedup | same answer |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['turn']} | {r['prompt_tokens']} | {r['tokens_run']} | {r['fresh_s']} | {r['reuse_s']} "
              f"| {r['speedup']}x | {'yes' if r['same_answer'] else 'NO'} |")  # fmt: skip


if __name__ == "__main__":
    main()
