"""QA and retrieval metrics.

Answer normalisation follows the SQuAD evaluation script (lowercase, drop punctuation, drop the
articles a/an/the, collapse whitespace), so numbers are comparable with published CLaRa results.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold alias."""
    norm_pred = normalize_answer(pred)
    return float(any(norm_pred == normalize_answer(g) for g in golds))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    # Two empty strings agree perfectly; one empty and one not share nothing.
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str, golds: Sequence[str]) -> float:
    """Best token-level F1 over the gold aliases."""
    pred_tokens = normalize_answer(pred).split()
    return max((_f1(pred_tokens, normalize_answer(g).split()) for g in golds), default=0.0)


def recall_at_k(retrieved_ids: Sequence[str], gold_ids: Sequence[str], k: int) -> float:
    """Fraction of the gold ids found among the first k retrieved ids."""
    gold = set(gold_ids)
    if not gold:
        return 0.0
    return len(gold & set(retrieved_ids[:k])) / len(gold)


def mrr(retrieved_ids: Sequence[str], gold_ids: Sequence[str]) -> float:
    """Reciprocal rank of the first gold id; 0 if none was retrieved."""
    gold = set(gold_ids)
    for rank, doc_id in enumerate(retrieved_ids, start=1):
        if doc_id in gold:
            return 1.0 / rank
    return 0.0


def _mean_block(rows: list[dict], keys: Iterable[str]) -> dict:
    block: dict = {"count": len(rows)}
    for key in keys:
        values = [float(r[key]) for r in rows if key in r]
        block[key] = sum(values) / len(values) if values else 0.0
    return block


def aggregate(rows: list[dict], keys: Iterable[str]) -> dict:
    """Mean of each key over all rows, and per question "type" when rows carry one.

    Returns {"all": {"count": n, key: mean, ...}, "<type>": {...}, ...}; types are sorted so the
    report is stable.
    """
    keys = list(keys)
    result = {"all": _mean_block(rows, keys)}
    types = sorted({r["type"] for r in rows if "type" in r})
    for t in types:
        result[t] = _mean_block([r for r in rows if r.get("type") == t], keys)
    return result
