"""QA and retrieval metrics: the one definition every report and test uses.

Normalisation (``normalize_answer``) follows the SQuAD evaluation script: lowercase, drop ASCII
punctuation, drop the whole words a / an / the, collapse whitespace ("The Silent-Harbor!" ->
"silentharbor", "1,278" -> "1278").

QA metrics, each the maximum over the gold aliases of a question (an answer is right if it matches any
alias), each in [0, 1] per question and averaged over questions:

* ``em`` exact match: normalised prediction == normalised gold (SQuAD EM);
* ``f1`` token F1: harmonic mean of token precision and recall of the normalised prediction against the
  normalised gold, tokens counted with multiplicity (SQuAD F1); two empty strings score 1, one empty 0;
* ``sub_em`` substring match: the normalised gold string occurs inside the normalised prediction, as
  FlashRAG's / BERGEN's "acc" (``sub_exact_match``). Plain string containment, so gold "1" is found in
  "1990" exactly as in those toolkits;
* ``cover_em`` token cover: every token of the normalised gold is among the prediction's normalised
  tokens, in any order, as CLaRa's reported "acc" (``cover_exact_match_score_1``): "Paris France" covers
  gold "France"; "Parisian" does not cover "Paris".
For sub_em and cover_em a gold that normalises to the empty string (e.g. "The") matches only an empty
prediction, and an empty prediction matches no non-empty gold.

Retrieval metrics, against a question's gold document ids:

* ``recall@k``: the share of the gold documents among the first k retrieved (for multi-hop questions the
  share of the supporting documents found; 0 when there is no gold);
* ``mrr``: 1 / rank of the first gold document retrieved, 0 if none.

``aggregate`` averages any of these over questions, overall ("all") and per question "type" (single_hop,
bridge, comparison, 2hop, ...) where the rows carry one.
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


def sub_exact_match(pred: str, golds: Sequence[str]) -> float:
    """1.0 if any normalised gold alias occurs as a substring of the normalised prediction (FlashRAG acc)."""
    norm_pred = normalize_answer(pred)
    for g in golds:
        norm_gold = normalize_answer(g)
        if (norm_gold in norm_pred) if norm_gold else not norm_pred:
            return 1.0
    return 0.0


def cover_exact_match(pred: str, golds: Sequence[str]) -> float:
    """1.0 if every normalised token of some gold alias is among the prediction's tokens (CLaRa acc)."""
    pred_tokens = set(normalize_answer(pred).split())
    for g in golds:
        gold_tokens = normalize_answer(g).split()
        if (all(t in pred_tokens for t in gold_tokens)) if gold_tokens else not pred_tokens:
            return 1.0
    return 0.0


QA_METRICS = ("em", "f1", "sub_em", "cover_em")


def qa_scores(pred: str, golds: Sequence[str]) -> dict[str, float]:
    """Every QA metric of one prediction: {"em", "f1", "sub_em", "cover_em"}."""
    return {"em": exact_match(pred, golds), "f1": token_f1(pred, golds),
            "sub_em": sub_exact_match(pred, golds), "cover_em": cover_exact_match(pred, golds)}


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
