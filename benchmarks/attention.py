"""Why the matcher pads its attention keys to a multiple of 16 (``mmsearch.rerank.cross.attention``).

Times, on one torch thread: ``softmax`` over rows of 8 to 32 values; torch's
``scaled_dot_product_attention`` against the padded attention at the key lengths the
re-ranker meets (10-15 text tokens or sound frames, 16 image regions); and the demo matcher's
judge of 50 candidates with either. Each pair is timed in alternating rounds (median), so
read the ratios.

    python benchmarks/attention.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from rerun import publish

from mmsearch.rerank import cross

ROUNDS = 7


def per_call_us(fn: Callable[[], object], calls: int = 200) -> float:
    for _ in range(10):
        fn()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def paired(first: Callable[[], object], second: Callable[[], object], calls: int = 200) -> tuple[float, float]:
    """Median µs per call of each, from alternating rounds."""
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(per_call_us(first, calls))
        b.append(per_call_us(second, calls))
    return statistics.median(a), statistics.median(b)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


PADDED = cross.attention


def judge_with(kernel: Callable, reranker, words, valid, memory, cosine) -> Callable[[], object]:
    """One judge of the candidates with ``kernel`` as the matcher's attention."""

    def run() -> object:
        cross.attention = kernel
        try:
            return reranker.matcher.judge(words, valid, memory, cosine)
        finally:
            cross.attention = PADDED

    return run


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    report: dict = {"command": "python benchmarks/attention.py", "torch": torch.__version__, "threads": 1}
    with torch.inference_mode():
        softmax = {}
        for width in (8, 10, 12, 15, 16, 24, 32):
            rows = torch.randn(200, 10, width)
            softmax[width] = round(statistics.median(per_call_us(partial(rows.softmax, -1)) for _ in range(ROUNDS)), 1)
        report["softmax_us"] = softmax
        attention = {}
        for keys in (10, 15, 16):
            q, k, v = torch.randn(50, 4, 10, 16), torch.randn(50, 4, keys, 16), torch.randn(50, 4, keys, 16)
            old, new = paired(partial(sdpa, q, k, v, None), partial(PADDED, q, k, v, None))
            attention[keys] = {"sdpa_us": round(old, 1), "padded_us": round(new, 1), "ratio": round(old / new, 2)}
        report["attention_50x4_heads_10_queries"] = attention
        from mmsearch.rerank.demo import DemoReranker

        reranker = DemoReranker()
        words, valid, _ = reranker.text("two small red circles on a white background")
        judge = {}
        for tokens in (16, 15):
            item = (torch.randn(50, tokens, 64), torch.randn(50))
            old, new = paired(
                judge_with(sdpa, reranker, words, valid, *item), judge_with(PADDED, reranker, words, valid, *item), 50
            )
            judge[tokens] = {
                "sdpa_ms": round(old / 1000, 2),
                "padded_ms": round(new / 1000, 2),
                "ratio": round(old / new, 2),
            }
        report["judge_50_candidates"] = judge
    publish("attention", report, markdown(report))


def markdown(report: dict) -> list[str]:
    lines = [
        "# Attention at re-ranking sizes (one torch thread)",
        "",
        f"Command: `{report['command']}` (torch {report['torch']})",
        "",
        "`softmax` over (200, 10, width), µs per call:",
        "",
        "| width | " + " | ".join(str(w) for w in report["softmax_us"]) + " |",
        "| --- | " + " | ".join("---:" for _ in report["softmax_us"]) + " |",
        "| µs | " + " | ".join(str(v) for v in report["softmax_us"].values()) + " |",
        "",
        "Attention of 50 candidates × 4 heads × 10 query tokens over `keys` tokens, µs per call:",
        "",
        "| keys | scaled_dot_product_attention | padded to 16 (`cross.attention`) | ratio |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for keys, row in report["attention_50x4_heads_10_queries"].items():
        lines.append(f"| {keys} | {row['sdpa_us']} | {row['padded_us']} | {row['ratio']} |")
    lines += [
        "",
        "The demo matcher's judge of 50 candidates (a 10-token text), ms per call:",
        "",
        "| item tokens | with SDPA | padded | ratio |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for tokens, row in report["judge_50_candidates"].items():
        lines.append(f"| {tokens} | {row['sdpa_ms']} | {row['padded_ms']} | {row['ratio']} |")
    return lines


if __name__ == "__main__":
    main()
