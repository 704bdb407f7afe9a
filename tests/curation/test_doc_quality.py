"""Document quality: OBELICS element and document filters, knowledge density, readability."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest

from curation import doc_quality as dq
from curation.html import html_to_document

IMAGE = {"type": "image", "src": "https://example.org/a.jpg", "alt": None, "title": None, "caption": None,
         "width": 640, "height": 480}


# 200 distinct made-up words, then the first 40 again: word 5-grams repeat, character 10-grams hardly
_WORDS = ["".join(p) for p in itertools.product(["ba", "ko", "ri", "mu", "te", "lan"], repeat=3)][:200]
REPEATED_RUN = " ".join(_WORDS + _WORDS[:40])


def text(t: str, role: str = "paragraph") -> dict:
    return {"type": "text", "text": t, "role": role}


def image(w: int | None, h: int | None) -> dict:
    return dict(IMAGE, width=w, height=h)


def gold_document(body: str) -> dict:
    """A gold article body as an interleaved document: its paragraphs, one 640x480 image after the first."""
    paras = [text(p.strip()) for p in body.split("\n") if p.strip()]
    return {"elements": paras[:1] + [IMAGE] + paras[1:]}


@pytest.fixture(scope="module")
def gold(shared_data) -> list[str]:
    gt = json.loads((shared_data / "web" / "article_extraction_benchmark" / "ground-truth.json").read_text())
    return [gt[k]["articleBody"] for k in sorted(gt)]


@pytest.fixture(scope="module")
def gold_results(gold):
    return [dq.curate_document(gold_document(b)) for b in gold]


@pytest.mark.parametrize(
    "element, reason",
    [
        (text("Updated at 1:23 p.m."), "too_few_words"),  # real byline-like nodes of the benchmark
        (text("Portion Fix Containers: 1 Green, 1 Red, 1 Yellow, 1 tsp."), "special_characters"),
        (text("Fire! Fire! Fire! Fire! Fire! Fire! Fire! Fire! everyone run now"), "char_repetition"),
        (text("buy now buy now buy now buy now buy now buy now buy now buy now buy now"), "char_repetition"),
        (text("the cat sat on the mat and then the cat sat on the mat and then slept"), "char_repetition"),
        (text(REPEATED_RUN), "word_repetition"),  # 0.31 of the 5-grams repeat; char repetition 0.04
        (text(" ".join(f"w{i}x" for i in range(1001))), "too_many_words"),
        (text("Ducks are mostly aquatic birds, found in both fresh water and sea water."), None),
        (text("Etymology", "heading"), None),  # headings have no lower bound
        (text("TERROR LEVEL 100", "heading"), None),  # 0.31 special: over the node bound, under the heading one
        (text("TERROR LEVEL 100"), "too_few_words"),
        (text("", "heading"), "empty"),
        # tables: cell grids are symbols and digits by design; only emptiness and word bounds apply
        (text("Ticker | Last | Change\nHD | 225.86 | -12.99\nLOW | 110.10 | -1.05", "table"), None),
        ({"type": "table", "text": "| a | b |\n|---|---|\n| 1 | 2 |"}, None),
        ({"type": "table", "text": "| 1 |"}, "too_few_words"),
    ],
)
def test_text_elements(element, reason):
    assert dq.check_text_element(element).reason == reason


@pytest.mark.parametrize(
    "w, h, reason",
    [
        (20, 20, "image_too_small"),  # Wikipedia's semi-protection icon
        (149, 400, "image_too_small"),
        (220, 205, None),
        (150, 300, None),  # aspect exactly 2
        (151, 303, "image_aspect_ratio"),
        (30000, 20000, "image_too_large"),
        (None, None, None),  # size unknown before download: kept, checked again later
        (640, None, None),
    ],
)
def test_image_elements(w, h, reason):
    assert dq.check_image_element(image(w, h)).reason == reason
    # PDF documents name the sizes image_width / image_height
    pdf_image = {"type": "image", "page": 1, "image_width": w, "image_height": h}
    assert dq.check_image_element(pdf_image).reason == reason


def test_filter_elements_counts_and_does_not_mutate():
    doc = {"elements": [text("Updated at 1:23 p.m."), image(20, 20), text("A long enough paragraph about ducks and geese."),
                        image(300, 200), text("Etymology", "heading")], "n_text": 3, "n_images": 2}
    out, drops = dq.filter_elements(doc)
    assert drops == Counter({"text:too_few_words": 1, "image:image_too_small": 1})
    assert [e.get("text", e.get("width")) for e in out["elements"]] == ["A long enough paragraph about ducks and geese.", 300, "Etymology"]
    assert (out["n_text"], out["n_images"]) == (2, 1)
    assert len(doc["elements"]) == 5


def test_gold_articles_verdicts(gold_results):
    """All 181 gold bodies of the article benchmark through element and document filters."""
    verdicts = Counter(v.reason for _, v, _, _ in gold_results)
    assert verdicts == Counter({
        None: 136, "language_mismatch": 16, "too_many_words": 11, "stopword_ratio": 10, "word_repetition": 3,
        "special_characters": 2, "low_knowledge_density": 2, "char_repetition": 1,
    })
    drops = sum((d for _, _, _, d in gold_results), Counter())
    assert drops == Counter({"text:too_few_words": 556, "text:special_characters": 202, "text:char_repetition": 84,
                             "text:word_repetition": 4})


def test_scores_on_gold_articles(gold, gold_results):
    english = [(b, s) for b, (_, _, s, _) in zip(gold, gold_results) if s["language"] == "en"]
    assert len(english) == 161
    kd = sorted((s["knowledge_density"], b[:30]) for b, s in english)
    assert [round(k, 3) for k, _ in kd[:3]] == [0.0, 0.012, 0.027]
    assert kd[0][1] == "None of the games can be witho"
    assert sum(k < 0.02 for k, _ in kd) == 2  # min_knowledge_density drops exactly those two
    assert min(s["reading_ease"] for _, s in english) == pytest.approx(13.458, abs=1e-3)
    assert all(s["grade_level"] is not None for _, s in english)
    # non-English documents get no readability (English formulas and thresholds)
    others = [s for _, _, s, _ in gold_results if s["language"] != "en"]
    assert len(others) == 20 and all(s["reading_ease"] is None for s in others)
    assert all(s["knowledge_density"] is None for s in others if s["language"] in ("ja", "zh"))


def test_pdf_text_scores(shared_data):
    """Born-digital English papers: high knowledge density, readable (thresholds far below)."""
    import pymupdf

    scores = []
    for path in sorted((shared_data / "pdf" / "scientific_latex").glob("*.pdf")):
        with pymupdf.open(path) as pdf:
            body = "\n".join(page.get_text() for page in pdf)
        scores.append((dq.knowledge_density(body), dq.readability(body)[0]))
    assert len(scores) == 13
    assert min(k for k, _ in scores) > 0.06
    assert min(r for _, r in scores) > 20


def test_wikipedia_duck(shared_data):
    html = (shared_data / "web" / "wikipedia_duck_docling" / "wiki_duck.html").read_bytes()
    doc, _ = html_to_document(html, "https://en.wikipedia.org/wiki/Duck")
    filtered, verdict, stats, drops = dq.curate_document(doc)
    assert drops == Counter({"image:image_too_small": 9, "text:char_repetition": 3, "text:special_characters": 2,
                             "text:too_few_words": 1})
    assert (stats["n_words"], stats["n_images"], stats["language"]) == (2125, 6, "en")
    assert verdict.reason == "too_many_words"  # OBELICS: at most 2000 words
    assert round(stats["knowledge_density"], 3) == 0.141
    assert round(stats["reading_ease"], 1) == 49.3 and round(stats["grade_level"], 1) == 11.9
    assert dq.check_document(filtered, dq.DocQualityConfig(max_words=None), stats).keep


def test_document_reasons_in_order():
    para = ("Ducks are mostly aquatic birds, and may be found in both fresh water and sea water. "
            "The word duck comes from Old English, a derivative of the verb meaning to dive.")
    good = {"elements": [text(para), IMAGE]}
    assert dq.check_document(good).keep
    assert dq.check_document({"elements": [IMAGE]}).reason == "empty"
    assert dq.check_document({"elements": [text("Ducks swim."), IMAGE]}).reason == "too_few_words"
    assert dq.check_document({"elements": [text(para)]}).reason == "too_few_images"
    assert dq.check_document({"elements": [text(para)] + [IMAGE] * 31}).reason == "too_many_images"
    german = "Enten sind überwiegend Wasservögel und leben sowohl im Süßwasser als auch im Meer, sagen die Forscher heute."
    assert dq.check_document({"elements": [text(german), IMAGE]}).reason == "language_mismatch"
    menu = "Home News Sports Weather Contact About Login Register Subscribe Archive Video Photos Opinion"
    assert dq.check_document({"elements": [text(menu), IMAGE]}).reason == "stopword_ratio"
    run_on = " ".join(["it is said that the members of the committee were not able to agree on which of the "
                       "many extraordinarily complicated interdisciplinary proposals they would support and"] * 6)
    stats = dq.document_stats({"elements": [text(run_on), IMAGE]})
    assert stats["reading_ease"] < 0
    cfg = dq.DocQualityConfig(max_word_repetition=None, max_char_repetition=None)
    assert dq.check_document({"elements": [text(run_on), IMAGE]}, cfg).reason == "low_knowledge_density"
    cfg = dq.DocQualityConfig(max_word_repetition=None, max_char_repetition=None, min_knowledge_density=None)
    assert dq.check_document({"elements": [text(run_on), IMAGE]}, cfg).reason == "low_reading_ease"
    assert dq.check_document(good, dq.DocQualityConfig(max_grade_level=5)).reason == "high_grade_level"


@pytest.mark.parametrize(
    "body, lang, expected",
    [
        ("In 2019 the company sold 4,000 units.", "en", 2 / 7),  # numbers
        ("Yesterday Mark Esper met officials in Hanoi.", "en", 3 / 7),  # names (not sentence-initial)
        ("The eigenvalue of the operator is real.", "en", 1 / 7),  # rare term
        ("We went out and had a nice day.", "en", 0.0),
        ("", "en", None),
        ("这是中文文本", "zh", None),
    ],
)
def test_knowledge_density_definition(body, lang, expected):
    got = dq.knowledge_density(body, lang)
    assert got == (pytest.approx(expected) if expected is not None else None)
