"""Versioned prompts of the LLM synthesizers (SCP data: QA pairs and paraphrases).

A prompt's ``version`` enters the response cache key and the synthesizer's ``prompt_version``, so a
changed prompt never reuses answers generated for the old one. Bump the version whenever the wording
changes; the cache key also holds a hash of the template text, so a forgotten bump still misses the cache.

Templates use ``{title}``, ``{document}`` and ``{style}`` placeholders, filled with ``str.replace`` (not
``str.format``) so the JSON example in the QA prompt needs no brace escaping.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    kind: str                         # "qa" or "paraphrase": also part of the cache key
    version: str
    system: str
    user: str                         # template with {title}, {document} and, for paraphrases, {style}
    styles: tuple[str, ...] = ()      # paraphrase i uses styles[i % len(styles)], so n paraphrases differ

    def messages(self, doc: dict, variant: int = 0) -> list[dict]:
        """Chat messages for one request about ``doc`` (variant = index of the paraphrase)."""
        user = (self.user.replace("{title}", doc.get("title", "") or "(none)")
                .replace("{style}", self.style(variant))
                .replace("{document}", doc["text"].strip()))
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def style(self, variant: int) -> str:
        if not self.styles:
            return ""
        style = self.styles[variant % len(self.styles)]
        if variant >= len(self.styles):
            # More paraphrases than styles: still make the request (and its cache key) distinct.
            style += f" This is rewrite number {variant + 1}; make it differ from the earlier ones."
        return style

    def fingerprint(self) -> str:
        """Hash of the template text: part of the cache key next to the version."""
        text = "\x00".join([self.kind, self.version, self.system, self.user, *self.styles])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


QA_PROMPT = Prompt(
    kind="qa",
    version="qa-v1",
    system="You write reading-comprehension data from documents. You reply with JSON only.",
    user="""Write question-answer pairs about the document below.

Rules:
- Cover every salient fact of the document: one question per fact, no two questions about the same fact.
- Every question must be answerable from the document alone and must name who or what it is about.
- Every answer is a short span of 1 to 8 words copied exactly from the document: the same words, spelling and numbers.
- Never put the answer inside its question.

Reply with a JSON list and nothing else, for example:
[{"question": "In which year was Mara Holt born?", "answer": "1950"}, {"question": "Where was Mara Holt born?", "answer": "Port Elwin"}]

Title: {title}
Document:
{document}""",
)

PARAPHRASE_PROMPT = Prompt(
    kind="paraphrase",
    version="paraphrase-v1",
    system="You rewrite documents faithfully. You never add or drop facts.",
    user="""Paraphrase the document below: restate the whole document in your own words and keep every fact, \
including every name, number, date and relation. Do not add facts, comments, a title or an introduction. {style}

Reply with the paraphrase only, as plain text.

Title: {title}
Document:
{document}""",
    styles=(
        "Change the order of the facts and reword every sentence.",
        "Use different sentence structures: turn passive sentences into active ones and combine short sentences.",
        "Start from a different fact than the original does and use synonyms where they keep the meaning.",
        "Write one flowing paragraph with different wording than the original.",
    ),
)
