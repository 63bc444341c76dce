"""diffuseq.metrics: hand-computed values on small examples and parity with NLTK / rouge-score / sacrebleu."""

from __future__ import annotations

import math
import random

import metric_oracles as O
import numpy as np
import pytest

from diffuseq import metrics as M
from diffuseq.metrics import adapters
from diffuseq.errors import UserError

X = (0.75 * (2 / 3) * 0.5 * (math.log(4) / 10)) ** 0.25  # BLEU("a b c d" | ref "a b c e"), by hand


# ------------------------------------------------------------------------------------------- cleaning

def test_cleaning_matches_diffuseq():
    assert M.clean_recover("  [CLS] a b [SEP] [PAD] [PAD] ").split() == ["a", "b"]
    assert M.clean_recover("[CLS] a b [SEP]") == " a b "  # DiffuSeq strips before removing
    assert M.clean_reference("[CLS] x y [SEP]") == " x y "
    assert M.clean_source("[CLS] s t [SEP] [SEP]") == " s t  "
    special = M.SpecialTokens(sos="<s>", eos="</s>", sep="<sep>", pad="<pad>")
    assert M.clean_recover("<s> a <sep> b </s> <pad>", special).split() == ["a", "b"]
    assert M.clean_recover("[CLS] a", special).split() == ["[CLS]", "a"]
    assert M.diffuseq_length(M.clean_recover("[CLS] a b [SEP]")) == 4  # DiffuSeq's len(split(' '))


# ----------------------------------------------------------------------------------------------- BLEU

@pytest.mark.parametrize("hyp, ref, expected", [
    ("a b c d", "a b c d", 1.0),
    ("a b c d", "a b c e", X),
    # short hypothesis: p3, p4 smoothed to ln2/10 and ln2/20 / 1, brevity penalty exp(1 - 4/2)
    ("a b", "a b c d", math.exp(-1) * ((math.log(2) / 10) * (math.log(2) / 20)) ** 0.25),
    # one token: the zero orders are left out (no smoothing when len(hyp) == 1), BP exp(1 - 2)
    ("a", "a b", math.exp(-1)),
    # longer than the reference: BP 1, p = 4/5, 3/4, 2/3, 1/2
    ("a b c d e", "a b c d", (0.8 * 0.75 * (2 / 3) * 0.5) ** 0.25),
    ("", "a b", 0.0),
    ("a b", "", 0.0),
    ("x y z", "a b c", 0.0),
    # clipping: "the" counts at most twice (p1 = 2/4); p2..p4 = 0/3, 0/2, 0/1 smoothed; BP 1 (4 > 3)
    ("the the the the", "the cat the",
     (0.5 * (math.log(4) / 10 / 3) * (math.log(4) / 20 / 2) * (math.log(4) / 40)) ** 0.25),
])
def test_sentence_bleu_by_hand(hyp, ref, expected):
    assert M.sentence_bleu(hyp, ref) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def _random_sentence(rng: random.Random, vocab: list[str]) -> list[str]:
    n = rng.choice([0, 1, 1, 2, 3, 4, 5, rng.randint(0, 25)])
    return [rng.choice(vocab) for _ in range(n)]


def test_sentence_bleu_nltk_parity():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method4
    rng = random.Random(1234)
    words = "a b c d e f the cat sat on mat . , ? don't".split()
    for _ in range(3000):
        vocab = words[: rng.randint(1, len(words))]
        hyp, ref = _random_sentence(rng, vocab), _random_sentence(rng, vocab)
        expected = sentence_bleu([ref], hyp, smoothing_function=smooth)
        got = M.sentence_bleu(hyp, ref)
        assert abs(got - expected) <= 1e-12, (hyp, ref, got, expected)
        assert M.sentence_bleu(" ".join(hyp), " ".join(ref)) == got


# -------------------------------------------------------------------------------------------- ROUGE-L

def test_rouge_l_by_hand():
    # tokens: the cat sat on the mat | the cat is on a mat -> LCS "the cat on mat" = 4 of 6 and 6
    assert M.rouge_l("The cat sat on the mat.", "the cat is on a mat") == pytest.approx(2 / 3, abs=1e-15)
    assert M.rouge_l("Hello, World!", "hello world") == 1.0
    assert M.rouge_l("a b c", "c b a") == pytest.approx(1 / 3)
    # P = 2/2, R = 2/4 -> F = 2 * 1 * 0.5 / 1.5
    assert M.rouge_l("a b", "a x b y") == pytest.approx(2 / 3)
    assert M.rouge_l("", "a") == 0.0
    assert M.rouge_l("? !", "a") == 0.0


def test_lcs_matches_dynamic_programming():
    rng = random.Random(7)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 40))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 40))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                table[i][j] = (table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1]
                               else max(table[i - 1][j], table[i][j - 1]))
        assert M.lcs_length(a, b) == table[-1][-1]


def test_rouge_l_rouge_score_parity():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng = random.Random(99)
    words = "a b c The the CAT cat, sat on mat. ? é x1 Y2 don't [CLS]".split()
    for _ in range(1500):
        hyp = " ".join(_random_sentence(rng, words))
        ref = " ".join(_random_sentence(rng, words))
        assert M.rouge_l(hyp, ref) == scorer.score(ref, hyp)["rougeL"].fmeasure, (hyp, ref)


# ------------------------------------------------------------------------------- dist-1, div-4, self-BLEU

def test_dist1_and_length():
    assert O.dist_n("a a b", 1) == pytest.approx(2 / 3)
    assert O.dist_n("a b c", 1) == 1.0
    assert O.dist_n("", 1) == 0
    assert O.dist_n(" a  a ", 1) == 0.5


def test_div4_by_hand():
    # 4-grams: abcd, bcde | abcd, bcdf -> 3 distinct of 4
    assert O.div_n(["a b c d e", "a b c d f"], 4) == 0.75
    assert O.div_n(["a b c", "a b c d"], 4) == 1.0
    assert O.div_n(["a b", "c"], 4) == 0


def test_self_bleu_by_hand():
    # pairs (0,1) = 1, (0,2) = (1,2) = X
    assert O.self_bleu(["a b c d", "a b c d", "a b c e"]) == pytest.approx((1 + 2 * X) / 3, rel=1e-12)
    # DiffuSeq scores pair i < j as BLEU(hyp=c_i, ref=c_j): the order matters
    short_first = math.exp(-1) * ((math.log(2) / 10) * (math.log(2) / 20)) ** 0.25
    assert O.self_bleu(["a b", "a b c d"]) == pytest.approx(short_first, rel=1e-12)
    assert O.self_bleu(["a b c d", "a b"]) == pytest.approx(M.sentence_bleu("a b c d", "a b"), rel=1e-12)
    assert O.self_bleu(["only one"]) == 0.0


def test_mbr_choice_by_hand():
    # c1 = "a b c d": BLEU(c1 | c2) = exp(1 - 5/4) = 0.7788;  c2: BLEU(c2 | c1) = 0.2 ** 0.25 = 0.6687
    cands = ["x y z", "a b c d", "a b c d e"]
    assert M.sentence_bleu(cands[1], cands[2]) == pytest.approx(math.exp(-0.25))
    assert M.sentence_bleu(cands[2], cands[1]) == pytest.approx(0.2 ** 0.25)
    assert O.mbr_select(cands) == 1
    assert O.mbr_select(["q", "a b", "a b"]) == 1  # tie: the first
    assert O.mbr_select(["a b", "a b", "c"]) == 0
    assert O.mbr_select(["solo"]) == 0


def test_self_bleu_and_mbr_match_nltk_diffuseq_loop():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method4
    rng = random.Random(5)
    words = "a b c d e f g".split()
    for _ in range(60):
        cands = [" ".join(_random_sentence(rng, words)) for _ in range(rng.randint(1, 6))]
        mat = [[sentence_bleu([b.split()], a.split(), smoothing_function=smooth) for b in cands] for a in cands]
        for i in range(len(cands)):
            mat[i][i] = 0
        assert O.mbr_select(cands) == int(np.argmax(np.sum(mat, -1)))
        pairs = [mat[i][j] for i in range(len(cands)) for j in range(i + 1, len(cands))]
        assert O.self_bleu(cands) == pytest.approx(float(np.mean(pairs)) if pairs else 0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------ evaluate()

def _toy(rng: random.Random, n_files: int, n_inputs: int) -> tuple[list[list[str]], list[list[str]]]:
    words = "a b c d e f g h".split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 9))) for _ in range(n_inputs)]
    recs = [[" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) for _ in range(n_inputs)]
            for _ in range(n_files)]
    return recs, [refs] * n_files


def test_evaluate_matches_single_metrics():
    recs, refs = _toy(random.Random(3), 3, 20)
    ev = M.evaluate(recs, refs, mbr=True, workers=1, progress=False)
    for f in range(3):
        s = ev.file_summary(f)
        assert s.bleu == pytest.approx(np.mean([M.sentence_bleu(h, r) for h, r in zip(recs[f], refs[f])]))
        assert s.rougeL == pytest.approx(np.mean([M.rouge_l(h, r) for h, r in zip(recs[f], refs[f])]))
        assert s.dist1 == pytest.approx(np.mean([O.dist_n(h, 1) for h in recs[f]]))
        assert s.avg_len == pytest.approx(np.mean([len(h.split()) for h in recs[f]]))
        assert s.n == 20
    choice = [O.mbr_select([recs[f][i] for f in range(3)]) for i in range(20)]
    assert ev.mbr_choice.tolist() == choice
    chosen = [recs[c][i] for i, c in enumerate(choice)]
    mbr = ev.mbr_summary()
    assert mbr.bleu == pytest.approx(np.mean([M.sentence_bleu(h, r) for h, r in zip(chosen, refs[0])]))
    assert ev.diversity_summary() is None
    ev_div = M.evaluate(recs, refs, diversity=True, workers=1, progress=False)
    div = ev_div.diversity_summary()
    assert div["self_bleu"] == pytest.approx(np.mean([O.self_bleu([recs[f][i] for f in range(3)]) for i in range(20)]))
    assert div["div4"] == pytest.approx(np.mean([O.div_n([recs[f][i] for f in range(3)], 4) for i in range(20)]))
    assert ev_div.mbr_summary() is None


def test_evaluate_parallel_equals_serial():
    recs, refs = _toy(random.Random(11), 4, 50)
    a = M.evaluate(recs, refs, mbr=True, workers=1, progress=False)
    b = M.evaluate(recs, refs, mbr=True, workers=2, chunk_size=7, min_parallel=0, progress=False)
    for key in ("bleu", "rougeL", "dist1", "length", "mbr_choice", "mbr_bleu", "mbr_rougeL"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key


def test_evaluate_single_file_has_no_diversity_or_mbr():
    recs, refs = _toy(random.Random(2), 1, 5)
    ev = M.evaluate(recs, refs, mbr=True, diversity=True, workers=1, progress=False)
    assert ev.mbr_summary() is None and ev.diversity_summary() is None


def test_corpus_bleu_matches_sacrebleu():
    import sacrebleu

    recs, refs = _toy(random.Random(8), 3, 30)
    expected = [sacrebleu.corpus_bleu(h, [r]).score for h, r in zip(recs, refs)]
    assert M.corpus_bleu_many(recs, refs, workers=2) == pytest.approx(expected, abs=1e-9)
    assert M.corpus_bleu_sacrebleu(recs[0], refs[0]) == pytest.approx(expected[0], abs=1e-9)
    others, other_refs = _toy(random.Random(9), 2, 20)  # a second call on the pool sees its own corpus only
    assert M.corpus_bleu_many(others, other_refs, workers=2) == pytest.approx(
        [sacrebleu.corpus_bleu(h, [r]).score for h, r in zip(others, other_refs)], abs=1e-9)
    assert M.corpus_bleu_many(recs, refs, workers=1) == pytest.approx(expected, abs=1e-9)
    assert adapters._WORKER_CORPUS is None  # the calling process keeps no corpus


def test_bertscore_needs_package_or_model(tmp_path):
    import importlib.util

    if importlib.util.find_spec("bert_score") is None:
        with pytest.raises(UserError, match="pip install bert-score"):
            M.check_bertscore(str(tmp_path))
    else:  # pragma: no cover - only where bert_score is installed
        with pytest.raises(UserError, match="no such local model folder"):
            M.check_bertscore(str(tmp_path / "missing"))
