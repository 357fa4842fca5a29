"""Benchmark evaluation: deterministic multiple-choice harness (`benchmarks`)."""

from .benchmarks import (
    BENCHMARKS,
    Question,
    build_prompt,
    evaluate,
    extract_answer,
    load_questions,
    original_extraction,
)


__all__ = ["BENCHMARKS", "Question", "build_prompt", "evaluate", "extract_answer", "load_questions",
           "original_extraction"]  # fmt: skip
