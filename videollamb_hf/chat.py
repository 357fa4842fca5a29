"""Multi-turn conversations about one encoded video, reusing the language model's cache across turns."""


def prompt_ids(processor, messages) -> list[int]:
    """Token ids of `messages` in the chat template with the generation prompt (the video's slots expanded)."""
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids, _ = processor._tokenize_prompt(prompt, add_special_tokens=True)
    return ids


class ChatSession:
    """A conversation about one encoded video in which later turns reuse the language model's cache of the earlier
    ones: each turn only runs the tokens after the longest prefix it shares with what the cache holds (the previous
    prompt and answer), instead of the whole conversation with its visual slots.

    The continuation gets what the full prompt would: the attention mask with the unused video slots masked out and
    the positions that skip them (as the model computes them at prefill), so its answers are the ones a fresh
    `answer_from_features` call gives (tested)."""

    def __init__(self, model, processor, features):
        self.model, self.processor, self.features = model, processor, features
        self.reset()

    def reset(self):
        self.cache, self.sequence, self.reused = None, [], 0

    def _language_mask(self, ids):
        import torch

        embeds = self.model.get_input_embeddings()(ids)
        _, slot_mask = self.model.model._merge_visual_tokens(ids, embeds, self.features, None)
        mask = torch.ones_like(ids, dtype=torch.bool)
        return (mask & slot_mask if slot_mask is not None else mask).long()

    def ask(self, messages, generate_kwargs: dict, streamer=None) -> str:
        """The answer to the last user turn of `messages` (chat messages, the video block in the first turn)."""
        import torch
        from transformers import DynamicCache

        prompt = prompt_ids(self.processor, messages)
        ids = torch.tensor([prompt], device=self.model.device)
        shared = 0
        if self.cache is not None:
            held = self.sequence[: self.cache.get_seq_length()]
            limit = min(len(held), len(prompt) - 1)  # at least one token left to run
            while shared < limit and held[shared] == prompt[shared]:
                shared += 1
        if shared == 0:
            self.cache = DynamicCache(config=self.model.config.get_text_config())
            extra = {"attention_mask": torch.ones_like(ids), "video_features": self.features}
        else:
            if self.cache.get_seq_length() > shared:
                self.cache.crop(shared - self.cache.get_seq_length())  # transformers 5: a negative count to drop
            mask = self._language_mask(ids)
            extra = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
        self.reused = shared
        with torch.no_grad():
            output = self.model.generate(input_ids=ids, cache=self.cache, streamer=streamer, **extra,
                                         **generate_kwargs)  # fmt: skip
        self.sequence = output[0].tolist()
        return self.processor.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()


__all__ = ["ChatSession", "prompt_ids"]
