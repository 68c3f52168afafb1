"""A seeded fictional encyclopedia: documents plus single-hop, bridge and comparison questions.

Why fictional: a small model cannot have memorised facts about people who never existed, so every
correct answer has to come from the retrieved (compressed) documents. That is exactly what CLaRa's
stages 2 and 3 must learn.

The world is built first as plain dicts (people, places, organisations, works) with links between
them; documents are prose renderings of those facts; questions are read off the same facts, so
every answer appears verbatim in a gold document.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from pathlib import Path

from clara_pipeline.jsonl import write_jsonl

COUNTRIES = ["Aldoria", "Brevonia", "Calmere", "Dunmark", "Estravia", "Feloria", "Garvessa", "Hollund"]

# Creative occupations come first: works are credited to people with the matching occupation.
OCCUPATIONS = [
    "writer", "film director", "musician", "engineer", "physician",
    "architect", "historian", "chemist", "painter", "economist",
]
WORK_KINDS = {  # kind -> (noun used in prose, creator occupation, creation verb)
    "book": ("novel", "writer", "written"),
    "film": ("film", "film director", "directed"),
    "album": ("album", "musician", "recorded"),
}
GENRES = {
    "book": ["mystery", "fantasy", "historical", "science fiction", "romance", "adventure"],
    "film": ["drama", "comedy", "thriller", "documentary", "western", "horror"],
    "album": ["jazz", "folk", "rock", "classical", "electronic", "blues"],
}
INDUSTRIES = ["publishing", "shipping", "banking", "software", "mining", "textile", "film production", "pharmaceutical"]
ORG_SUFFIXES = ["Holdings", "Works", "Group", "Company", "Institute", "Guild", "Trust", "Foundry"]
TITLE_ADJECTIVES = ["Silent", "Crimson", "Hollow", "Distant", "Golden", "Broken", "Hidden", "Northern",
                    "Last", "Winter", "Burning", "Quiet", "Iron", "Painted", "Lonely", "Velvet"]
TITLE_NOUNS = ["Harbor", "Garden", "Letter", "Bridge", "Lantern", "Orchard", "Mirror", "Voyage",
               "Tower", "River", "Promise", "Market", "Shadow", "Meadow", "Signal", "Crown"]

# Short syllables keep names to a few wordpieces: documents are truncated to 64 of them.
ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "st"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ia"]
CODAS = ["", "", "", "n", "r", "l", "s", "m"]
SURNAME_ENDINGS = ["", "", "", "s", "en", "ov", "ski", "ard"]
CITY_ENDINGS = ["ford", "holm", "ria", "dale", "mouth", "wick", "by", "gard"]

# Filler sentences pad short documents up to the minimum length; they carry no questioned fact.
PERSON_FILLERS = [
    "{f} is often described as patient and curious.",
    "Colleagues remember {f} for long walks and careful notes.",
    "{f} enjoys chess, gardening and old maps.",
    "{f} has given many public lectures.",
    "Friends say {f} rarely misses a morning swim.",
]
PLACE_FILLERS = [
    "The city is known for its stone bridges and busy markets.",
    "Its old quarter attracts many visitors every summer.",
    "Local festivals celebrate the harvest each autumn.",
    "A railway line connects it to the capital.",
]
ORG_FILLERS = [
    "The company is known for careful record keeping.",
    "It publishes an annual report on its activities.",
    "Its staff are trained in a small internal academy.",
    "The firm has grown slowly but steadily.",
]
WORK_FILLERS = [
    "Critics praised its pacing and atmosphere.",
    "It has been translated into several languages.",
    "The work slowly found a loyal audience.",
    "Many readers consider it an overlooked classic.",
]

MIN_WORDS, MAX_WORDS = 40, 70
QUESTION_MIX = [("single_hop", 0.5), ("bridge", 0.3), ("comparison", 0.2)]


# ----------------------------------------------------------------------------- names

def _syllable(rng: random.Random) -> str:
    return rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)


def _word(rng: random.Random, n_syllables: int) -> str:
    return "".join(_syllable(rng) for _ in range(n_syllables)).capitalize()


def _unique(rng: random.Random, make, used: set[str]) -> str:
    """Draw names until one is new. `used` spans all entity kinds so every title is unambiguous."""
    for _ in range(1000):
        name = make(rng)
        if name not in used:
            used.add(name)
            return name
    raise RuntimeError("could not draw a unique name; the name space is too small")


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _population(n: int) -> str:
    return f"{n:,}"


# ----------------------------------------------------------------------------- world

def _make_places(rng: random.Random, n: int, used: set[str]) -> list[dict]:
    places = []
    for _ in range(n):
        name = _unique(rng, lambda r: _word(r, r.choice([1, 2])) + r.choice(CITY_ENDINGS), used)
        river = _unique(rng, lambda r: _word(r, 2), used)
        places.append({
            "name": name,
            "country": rng.choice(COUNTRIES),
            "population": rng.randrange(5_000, 2_000_000, 100),
            "founded": rng.randint(700, 1850),
            "river": river,
        })
    return places


def _make_people(rng: random.Random, n: int, places: list[dict], used: set[str]) -> list[dict]:
    first_names: set[str] = set()
    people = []
    for i in range(n):
        first = _unique(rng, lambda r: _word(r, 2), first_names | used)
        first_names.add(first)
        full = _unique(rng, lambda r: f"{first} {_word(r, 2)}{r.choice(SURNAME_ENDINGS)}", used)
        # The first few people cover every occupation, so every work kind has a possible creator.
        occupation = OCCUPATIONS[i] if i < len(OCCUPATIONS) else rng.choice(OCCUPATIONS)
        people.append({
            "name": full,
            "first": first,
            "born": rng.randint(1890, 1990),
            "birthplace": rng.choice(places)["name"],
            "occupation": occupation,
            "employer": None,  # filled once organisations exist
            "spouse": None,
            "sibling": None,
        })
    # Pair some people up; relations are symmetric so both documents tell the same story.
    order = list(range(n))
    rng.shuffle(order)
    pairs = [(order[i], order[i + 1]) for i in range(0, n - 1, 2)]
    for a, b in pairs:
        relation = rng.choice(["spouse", "sibling", None])
        if relation:
            people[a][relation] = people[b]["name"]
            people[b][relation] = people[a]["name"]
    return people


def _make_organisations(rng: random.Random, n: int, people: list[dict], places: list[dict],
                        used: set[str]) -> list[dict]:
    # Distinct founders, so "the organisation founded by P" is never ambiguous.
    founders = rng.sample(people, min(n, len(people))) if people else []
    orgs = []
    for i in range(n):
        founder = founders[i % len(founders)] if founders else None
        name = _unique(rng, lambda r: f"{_word(r, 2)} {r.choice(ORG_SUFFIXES)}", used)
        # Founded in the founder's working life, and never in the future.
        founded = (founder["born"] + rng.randint(25, min(55, 2023 - founder["born"]))) if founder \
            else rng.randint(1850, 1990)
        orgs.append({
            "name": name,
            "founded": founded,
            "headquarters": rng.choice(places)["name"],
            "founder": founder["name"] if founder else None,
            "industry": rng.choice(INDUSTRIES),
        })
    for person in people:
        if orgs:
            person["employer"] = rng.choice(orgs)["name"]
    return orgs


def _make_works(rng: random.Random, n: int, people: list[dict], used: set[str]) -> list[dict]:
    works = []
    for _ in range(n):
        kind = rng.choice(list(WORK_KINDS))
        wanted = WORK_KINDS[kind][1]
        creators = [p for p in people if p["occupation"] == wanted] or people
        creator = rng.choice(creators)
        title = _unique(rng, lambda r: f"The {r.choice(TITLE_ADJECTIVES)} {r.choice(TITLE_NOUNS)}", used)
        works.append({
            "name": title,
            "kind": kind,
            "year": creator["born"] + rng.randint(20, min(60, 2024 - creator["born"])),
            "creator": creator["name"],
            "genre": rng.choice(GENRES[kind]),
        })
    return works


# ----------------------------------------------------------------------------- prose

def _person_sentences(p: dict, rng: random.Random) -> tuple[str, list[str], list[str]]:
    name, f, occ = p["name"], p["first"], p["occupation"]
    intro = rng.choice([
        f"{name} is {_article(occ)} {occ}.",
        f"{name} works as {_article(occ)} {occ}.",
        f"{name} is known as {_article(occ)} {occ}.",
    ])
    facts = [rng.choice([
        f"{f} was born in {p['birthplace']} in {p['born']}.",
        f"In {p['born']}, {f} was born in {p['birthplace']}.",
        f"{f} was born in {p['born']} in the city of {p['birthplace']}.",
    ])]
    if p["employer"]:
        facts.append(rng.choice([
            f"{f} works for {p['employer']}.",
            f"{f} is employed by {p['employer']}.",
            f"{f} holds a position at {p['employer']}.",
        ]))
    if p["spouse"]:
        facts.append(rng.choice([
            f"{f} is married to {p['spouse']}.",
            f"{f} married {p['spouse']}.",
            f"The spouse of {f} is {p['spouse']}.",
        ]))
    if p["sibling"]:
        facts.append(rng.choice([
            f"{f} has a sibling named {p['sibling']}.",
            f"{f} and {p['sibling']} are siblings.",
            f"The sibling of {f} is {p['sibling']}.",
        ]))
    return intro, facts, [s.format(f=f) for s in PERSON_FILLERS]


def _place_sentences(c: dict, rng: random.Random) -> tuple[str, list[str], list[str]]:
    name, pop = c["name"], _population(c["population"])
    intro = rng.choice([
        f"{name} is a city in {c['country']}.",
        f"{name} is a city located in {c['country']}.",
        f"{name} is a town in the country of {c['country']}.",
    ])
    facts = [
        rng.choice([
            f"{name} has a population of {pop}.",
            f"About {pop} people live in {name}.",
            f"The population of {name} is {pop}.",
        ]),
        rng.choice([
            f"{name} was founded in {c['founded']}.",
            f"The city was founded in {c['founded']}.",
            f"In {c['founded']}, settlers founded {name}.",
        ]),
        rng.choice([
            f"The {c['river']} River flows through {name}.",
            f"{name} lies on the banks of the {c['river']} River.",
            f"The city was built along the {c['river']} River.",
        ]),
    ]
    return intro, facts, list(PLACE_FILLERS)


def _org_sentences(o: dict, rng: random.Random) -> tuple[str, list[str], list[str]]:
    name, ind = o["name"], o["industry"]
    intro = rng.choice([
        f"{name} is {_article(ind)} {ind} company.",
        f"{name} is an organisation in the {ind} industry.",
        f"{name} is {_article(ind)} {ind} firm.",
    ])
    if o["founder"]:
        founding = rng.choice([
            f"{name} was founded in {o['founded']} by {o['founder']}.",
            f"{o['founder']} founded {name} in {o['founded']}.",
            f"In {o['founded']}, {o['founder']} established {name}.",
        ])
    else:
        founding = f"{name} was founded in {o['founded']}."
    facts = [founding, rng.choice([
        f"{name} is headquartered in {o['headquarters']}.",
        f"The headquarters of {name} are in {o['headquarters']}.",
        f"{name} has its main office in {o['headquarters']}.",
    ])]
    return intro, facts, list(ORG_FILLERS)


def _work_sentences(w: dict, rng: random.Random) -> tuple[str, list[str], list[str]]:
    name, genre = w["name"], w["genre"]
    noun, _, verb = WORK_KINDS[w["kind"]]
    intro = rng.choice([
        f"{name} is {_article(genre)} {genre} {noun}.",
        f"{name} is {_article(genre)} {genre} {noun} from {w['year']}.",
        f"{name} is a {w['year']} {genre} {noun}.",
    ])
    released = "published" if w["kind"] == "book" else "released"
    facts = [
        rng.choice([
            f"{name} was {verb} by {w['creator']}.",
            f"It was {verb} by {w['creator']}.",
            f"The {noun} was {verb} by {w['creator']}.",
        ]),
        rng.choice([
            f"It was first {released} in {w['year']}.",
            f"The {noun} was {released} in {w['year']}.",
            f"In {w['year']}, the {noun} was {released}.",
        ]),
    ]
    return intro, facts, list(WORK_FILLERS)


def _assemble(intro: str, facts: list[str], fillers: list[str], rng: random.Random) -> str:
    """Intro first, questioned facts shuffled next, then fillers until the minimum length.

    Fillers go last because the model truncates documents to 64 wordpieces: whatever is cut off
    should be the part no question depends on.
    """
    rng.shuffle(facts)
    sentences = [intro, *facts]
    pool = list(fillers)
    rng.shuffle(pool)
    while _count_words(sentences) < MIN_WORDS and pool:
        candidate = pool.pop()
        if _count_words(sentences + [candidate]) <= MAX_WORDS:
            sentences.append(candidate)
    return " ".join(sentences)


def _count_words(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences)


def _doc_id(title: str, text: str) -> str:
    return "doc-" + hashlib.sha1((title + text).encode("utf-8")).hexdigest()[:8]


def _make_documents(world: dict, rng: random.Random) -> tuple[list[dict], dict[str, str]]:
    """One document per entity; returns the documents and a name -> doc id map."""
    renderers = [("person", "people", _person_sentences), ("place", "places", _place_sentences),
                 ("organisation", "organisations", _org_sentences), ("work", "works", _work_sentences)]
    documents, id_of = [], {}
    for kind, key, render in renderers:
        for entity in world[key]:
            intro, facts, fillers = render(entity, rng)
            text = _assemble(intro, facts, fillers, rng)
            doc = {"id": _doc_id(entity["name"], text), "title": entity["name"], "text": text, "kind": kind}
            if doc["id"] in id_of.values():
                raise RuntimeError(f"document id collision for {entity['name']!r}")
            id_of[entity["name"]] = doc["id"]
            documents.append(doc)
    return documents, id_of


# ----------------------------------------------------------------------------- questions
# Each candidate is (key, question, answers, gold entity names, type). The key names the
# underlying fact, so the eval split holds out facts, not just phrasings.

def _q(key: str, question: str, answers: list[str], gold: list[str], qtype: str) -> dict:
    return {"key": key, "question": question, "answers": answers, "gold": gold, "type": qtype}


def _single_hop(world: dict, rng: random.Random) -> list[dict]:
    out = []
    for p in world["people"]:
        n = p["name"]
        out.append(_q(f"born:{n}", rng.choice([f"When was {n} born?", f"In which year was {n} born?",
                                                 f"What is the birth year of {n}?"]), [str(p["born"])], [n], "single_hop"))
        out.append(_q(f"birthplace:{n}", rng.choice([f"Where was {n} born?", f"In which city was {n} born?",
                                                       f"What is the birthplace of {n}?"]), [p["birthplace"]], [n], "single_hop"))
        out.append(_q(f"occupation:{n}", rng.choice([f"What is the occupation of {n}?", f"What does {n} work as?",
                                                       f"What is {n} known as?"]), [p["occupation"]], [n], "single_hop"))
        if p["employer"]:
            out.append(_q(f"employer:{n}", rng.choice([f"Which organisation does {n} work for?", f"Who employs {n}?",
                                                         f"Where does {n} work?"]), [p["employer"]], [n], "single_hop"))
        if p["spouse"]:
            out.append(_q(f"spouse:{n}", rng.choice([f"Who is {n} married to?", f"Who is the spouse of {n}?"]),
                          [p["spouse"]], [n], "single_hop"))
    for c in world["places"]:
        n = c["name"]
        pop = _population(c["population"])
        out.append(_q(f"country:{n}", rng.choice([f"In which country is {n}?", f"Which country is {n} in?",
                                                    f"In which country is the city of {n} located?"]), [c["country"]], [n], "single_hop"))
        out.append(_q(f"population:{n}", rng.choice([f"What is the population of {n}?", f"How many people live in {n}?",
                                                       f"How large is the population of {n}?"]), [pop, str(c["population"])], [n], "single_hop"))
        out.append(_q(f"cityfounded:{n}", rng.choice([f"When was {n} founded?", f"In which year was {n} founded?",
                                                        f"What year was the city of {n} founded?"]), [str(c["founded"])], [n], "single_hop"))
        out.append(_q(f"river:{n}", rng.choice([f"Which river flows through {n}?", f"On which river does {n} lie?",
                                                  f"What river runs through {n}?"]),
                      [f"{c['river']} River", c["river"]], [n], "single_hop"))
    for o in world["organisations"]:
        n = o["name"]
        out.append(_q(f"hq:{n}", rng.choice([f"Where is the headquarters of {n}?", f"In which city is {n} headquartered?",
                                               f"Where does {n} have its main office?"]), [o["headquarters"]], [n], "single_hop"))
        out.append(_q(f"orgfounded:{n}", rng.choice([f"When was {n} founded?", f"In which year was {n} founded?",
                                                       f"What year was {n} established?"]), [str(o["founded"])], [n], "single_hop"))
        if o["founder"]:
            out.append(_q(f"founder:{n}", rng.choice([f"Who founded {n}?", f"Who is the founder of {n}?",
                                                        f"Who established {n}?"]), [o["founder"]], [n], "single_hop"))
        out.append(_q(f"industry:{n}", rng.choice([f"In which industry does {n} work?", f"What industry is {n} in?",
                                                     f"What kind of company is {n}?"]), [o["industry"]], [n], "single_hop"))
    for w in world["works"]:
        n = w["name"]
        out.append(_q(f"creator:{n}", rng.choice([f"Who created {n}?", f"Who is the creator of {n}?",
                                                    f"Who made the {WORK_KINDS[w['kind']][0]} {n}?"]), [w["creator"]], [n], "single_hop"))
        out.append(_q(f"year:{n}", rng.choice([f"When was {n} released?", f"In which year did {n} come out?",
                                                 f"What year is {n} from?"]), [str(w["year"])], [n], "single_hop"))
        out.append(_q(f"genre:{n}", rng.choice([f"What genre is {n}?", f"Which genre does {n} belong to?",
                                                  f"What is the genre of {n}?"]), [w["genre"]], [n], "single_hop"))
    return out


def _bridge(world: dict, rng: random.Random) -> list[dict]:
    people = {p["name"]: p for p in world["people"]}
    places = {c["name"]: c for c in world["places"]}
    orgs = {o["name"]: o for o in world["organisations"]}
    out = []
    for w in world["works"]:
        creator = people[w["creator"]]
        n = w["name"]
        out.append(_q(f"creator-birthplace:{n}", rng.choice([f"In which city was the creator of {n} born?",
                                                               f"Where was the creator of {n} born?"]),
                      [creator["birthplace"]], [n, creator["name"]], "bridge"))
        out.append(_q(f"creator-born:{n}", rng.choice([f"In which year was the creator of {n} born?",
                                                         f"When was the creator of {n} born?"]),
                      [str(creator["born"])], [n, creator["name"]], "bridge"))
    for o in world["organisations"]:
        n = o["name"]
        hq = places[o["headquarters"]]
        out.append(_q(f"hq-country:{n}", rng.choice([f"In which country is the headquarters of {n}?",
                                                       f"Which country is {n} headquartered in?"]),
                      [hq["country"]], [n, hq["name"]], "bridge"))
        if o["founder"]:
            founder = people[o["founder"]]
            out.append(_q(f"founder-occupation:{n}", rng.choice([f"What is the occupation of the founder of {n}?",
                                                                   f"What does the founder of {n} work as?"]),
                          [founder["occupation"]], [n, founder["name"]], "bridge"))
    for p in world["people"]:
        n = p["name"]
        city = places[p["birthplace"]]
        out.append(_q(f"birth-country:{n}", rng.choice([f"In which country was {n} born?",
                                                          f"In which country is the birthplace of {n}?"]),
                      [city["country"]], [n, city["name"]], "bridge"))
        out.append(_q(f"birth-river:{n}", rng.choice([f"Which river flows through the birthplace of {n}?",
                                                        f"Which river runs through the city where {n} was born?"]),
                      [f"{city['river']} River", city["river"]], [n, city["name"]], "bridge"))
        if p["employer"] and orgs[p["employer"]]["founder"]:
            org = orgs[p["employer"]]
            out.append(_q(f"employer-founder:{n}", rng.choice([f"Who founded the employer of {n}?",
                                                                 f"Who founded the organisation that employs {n}?"]),
                          [org["founder"]], [n, org["name"]], "bridge"))
            out.append(_q(f"employer-hq:{n}", rng.choice([f"Where is the headquarters of the employer of {n}?",
                                                            f"In which city is the employer of {n} headquartered?"]),
                          [org["headquarters"]], [n, org["name"]], "bridge"))
    return out


def _comparison(world: dict, rng: random.Random, wanted: int) -> list[dict]:
    """Random pairs with distinct values (ties would make the answer ill-defined)."""
    specs = [  # (entity list key, attribute, question templates, smaller value wins?)
        ("people", "born", ["Who was born first, {a} or {b}?", "Who is older, {a} or {b}?"], True),
        ("organisations", "founded", ["Which was founded earlier, {a} or {b}?",
                                      "Which organisation is older, {a} or {b}?"], True),
        ("places", "founded", ["Which city was founded first, {a} or {b}?", "Which city is older, {a} or {b}?"], True),
        ("places", "population", ["Which city has the larger population, {a} or {b}?",
                                  "Which city has more inhabitants, {a} or {b}?"], False),
        ("works", "year", ["Which came out first, {a} or {b}?", "Which was released earlier, {a} or {b}?"], True),
    ]
    specs = [s for s in specs if len(world[s[0]]) >= 2]
    out, seen = [], set()
    for _ in range(wanted * 20):
        if len(out) >= wanted or not specs:
            break
        key, attr, templates, smaller_wins = rng.choice(specs)
        a, b = rng.sample(world[key], 2)
        pair_key = f"cmp-{key}-{attr}:" + "|".join(sorted([a["name"], b["name"]]))
        if a[attr] == b[attr] or pair_key in seen:
            continue
        seen.add(pair_key)
        winner = min((a, b), key=lambda e: e[attr]) if smaller_wins else max((a, b), key=lambda e: e[attr])
        question = rng.choice(templates).format(a=a["name"], b=b["name"])
        out.append(_q(pair_key, question, [winner["name"]], [a["name"], b["name"]], "comparison"))
    return out


def _type_counts(total: int) -> dict[str, int]:
    counts = {t: round(total * share) for t, share in QUESTION_MIX[:-1]}
    counts[QUESTION_MIX[-1][0]] = total - sum(counts.values())
    return counts


def _select_questions(pools: dict[str, list[dict]], total: int, rng: random.Random) -> list[dict]:
    """Draw the per-type quota from each pool; a short pool's shortfall comes from the others."""
    chosen, leftovers = [], []
    for qtype, count in _type_counts(total).items():
        pool = list(pools[qtype])
        rng.shuffle(pool)
        chosen.extend(pool[:count])
        leftovers.extend(pool[count:])
    shortfall = total - len(chosen)
    if shortfall > len(leftovers):
        raise ValueError(f"the corpus supports only {len(chosen) + len(leftovers)} questions, {total} requested")
    chosen.extend(leftovers[:shortfall])
    # Drop repeated question texts (two facts can never share one, but be safe).
    texts = [q["question"] for q in chosen]
    if len(set(texts)) != len(texts):
        raise RuntimeError("duplicate question text generated")
    return chosen


def _split(chosen: list[dict], num_eval: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Stratified by type so the held-out eval set has the same mix as train."""
    total = len(chosen)
    by_type: dict[str, list[dict]] = {}
    for q in chosen:
        by_type.setdefault(q["type"], []).append(q)
    train, evaluation = [], []
    types = list(by_type)
    remaining = num_eval
    for i, t in enumerate(types):
        group = by_type[t]
        k = remaining if i == len(types) - 1 else min(remaining, round(len(group) * num_eval / total))
        k = min(k, len(group))
        evaluation.extend(group[:k])
        train.extend(group[k:])
        remaining -= k
    rng.shuffle(train)
    rng.shuffle(evaluation)
    return train, evaluation


def _finalise(questions: list[dict], split: str, id_of: dict[str, str]) -> list[dict]:
    return [
        {"id": f"q-{split}-{i}", "question": q["question"], "answers": q["answers"],
         "gold_doc_ids": [id_of[name] for name in q["gold"]], "type": q["type"]}
        for i, q in enumerate(questions)
    ]


# ----------------------------------------------------------------------------- public API

def generate_corpus(cfg: dict, seed: int) -> dict:
    """Build the fictional encyclopedia. Same cfg and seed -> identical output."""
    rng = random.Random(seed)
    used: set[str] = set(COUNTRIES)
    places = _make_places(rng, int(cfg["num_places"]), used)
    if not places:
        raise ValueError("num_places must be at least 1 (people need birthplaces)")
    people = _make_people(rng, int(cfg["num_people"]), places, used)
    orgs = _make_organisations(rng, int(cfg["num_organisations"]), people, places, used)
    works = _make_works(rng, int(cfg["num_works"]), people, used) if people else []
    world = {"people": people, "places": places, "organisations": orgs, "works": works}

    documents, id_of = _make_documents(world, rng)

    num_train, num_eval = int(cfg["num_train_questions"]), int(cfg["num_eval_questions"])
    total = num_train + num_eval
    pools = {
        "single_hop": _single_hop(world, rng),
        "bridge": _bridge(world, rng),
        "comparison": _comparison(world, rng, _type_counts(total)["comparison"]),
    }
    chosen = _select_questions(pools, total, rng)
    train, evaluation = _split(chosen, num_eval, rng)
    return {
        "documents": documents,
        "questions_train": _finalise(train, "train", id_of),
        "questions_eval": _finalise(evaluation, "eval", id_of),
    }


def corpus_stats(corpus: dict) -> dict:
    docs = corpus["documents"]
    words = [len(d["text"].split()) for d in docs]
    stats = {
        "documents": {"total": len(docs), **dict(sorted(Counter(d["kind"] for d in docs).items()))},
        "document_words": {"min": min(words, default=0), "max": max(words, default=0),
                           "mean": round(sum(words) / len(words), 2) if words else 0.0},
        "questions": {},
    }
    for split in ("train", "eval"):
        qs = corpus[f"questions_{split}"]
        stats["questions"][split] = {"total": len(qs), **dict(sorted(Counter(q["type"] for q in qs).items()))}
    return stats


def write_corpus(out_dir: Path, corpus: dict) -> dict:
    """Write documents.jsonl, questions_train.jsonl, questions_eval.jsonl and stats.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "documents.jsonl", corpus["documents"])
    write_jsonl(out_dir / "questions_train.jsonl", corpus["questions_train"])
    write_jsonl(out_dir / "questions_eval.jsonl", corpus["questions_eval"])
    stats = corpus_stats(corpus)
    tmp = out_dir / "stats.json.tmp"
    tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / "stats.json")
    return stats


# Work titles ("The <adjective> <noun>") run out near 150 unique ones; a larger draw makes the rest people.
MAX_WORKS = 150
PRETRAINING_MIX = {"num_people": 160, "num_places": 40, "num_organisations": 50, "num_works": 90}


def pretraining_documents(n: int, seed: int, exclude_titles=()) -> list[dict]:
    """About n documents of a second fictional encyclopedia, drawn with `seed`, for reconstruction pretraining.

    The paper pretrains its compressor on Wikipedia, not on the corpus it is evaluated on. The embedded
    analogue is another draw of the same world: none of these documents repeats in training, so the loss
    can only fall by reading the memory tokens, not by learning the documents by heart. A document whose
    title is in `exclude_titles` (the evaluated corpus's) is left out: the same invented name with other
    facts would teach the opposite of what the corpus says."""
    if n <= 0:
        return []
    scale = n / sum(PRETRAINING_MIX.values())
    cfg = {k: max(1, int(v * scale)) for k, v in PRETRAINING_MIX.items()}
    cfg["num_people"] += max(0, cfg["num_works"] - MAX_WORKS)
    cfg["num_works"] = min(cfg["num_works"], MAX_WORKS)
    cfg.update(num_train_questions=10, num_eval_questions=10)
    excluded = set(exclude_titles)
    return [{"id": f"pre-{d['id'].split('-', 1)[-1]}", "title": d["title"], "text": d["text"]}
            for d in generate_corpus(cfg, seed)["documents"] if d["title"] not in excluded]
