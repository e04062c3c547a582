"""Feature dashboards: self-contained HTML + markdown, logit effects through the (tied or separate) unembedding
computed as numpy does from the weights written, accuracies read from a claims report; a slow test opens the
page in headless Chromium and keeps a screenshot under reports/."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest

from checkpoints import tiny_gguf
from harness import dashboards
from harness import feature_contexts as FC
from harness.model.gguf_reader import read_gguf
from harness.sae import sae as sae_lib

REPO = pathlib.Path(__file__).resolve().parent.parent


def _study(seed: int = 0) -> FC.FeatureStudy:
    """A small synthetic study: plain text where the feature ramps up on one sequence, MC prompts at zero."""
    rng = np.random.default_rng(seed)
    plain = rng.integers(0, 50, (5, 12))
    acts = [np.zeros(12, np.float32) for _ in range(5)]
    acts[2][4:8] = [0.5, 1.0, 3.0, 0.2]
    acts[4][9] = 1.5
    ps = FC.plain_token_set(plain, acts, note="synthetic plain text")
    mc = FC.MCSequences(ids=tuple(rng.integers(0, 50, 8) for _ in range(4)), counted=tuple(np.ones(8, bool) for _ in range(4)),
                        answer=tuple(np.eye(8, dtype=bool)[7] for _ in range(4)), labels=tuple(f"q0 option {l}" for l in "ABCD"),
                        skipped=(), fmt="letter")
    ms = FC.mc_token_set(mc, [np.full(8, 0.1 * (k + 1), np.float32) for k in range(4)])
    sets = (ps, ms)
    top = FC.pooled_top(sets, 4)
    return FC.FeatureStudy(feature=7, reading="encoder", sets=sets, firing=FC.firing(sets, feature=7, reading="encoder", top_n=4),
                           contexts=tuple(FC.contexts(sets, top, lambda t: f"w{t} & <x>\n")))


def test_the_html_page_is_self_contained_and_shows_the_contexts_in_order(tmp_path):
    d = dashboards.dashboard_of(_study(), profile="test", accuracies={"C9-example": "0.5 [0.4, 0.6] (n=100)"})
    html_path, md_path = dashboards.write_dashboard(d, tmp_path / "features")
    page = html_path.read_text()
    assert html_path.name == "feature-7.html" and md_path.name == "feature-7.md"
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must not load anything from outside"
    assert 'src="data:image/png;base64,' in page
    assert "&lt;x&gt;" in page and "<x>" not in page  # token text is escaped
    values = [float(v) for v in re.findall(r"<tr><td>\d+</td><td[^>]*>[^<]*</td><td>[^<]*</td><td>([^<]+)</td>", page)]
    assert values == sorted(values, reverse=True) and values[0] == 3.0
    assert "C9-example" in page and "0.5 [0.4, 0.6]" in page
    assert (tmp_path / "features" / "feature-7-hist.png").read_bytes()[:4] == b"\x89PNG"
    md = md_path.read_text()
    assert "| 1 | plain text | plain-text sequence 2 | 3 |" in md and "feature-7-hist.png" in md


@pytest.mark.parametrize("tied", [False, True])
def test_logit_effects_are_the_decoder_row_through_final_norm_scale_and_unembedding(tmp_path, tied):
    written = tiny_gguf(tmp_path / "tiny.gguf", tied=tied, seed=4)
    ck = read_gguf(tmp_path / "tiny.gguf")
    w = written["canonical"]
    d = ck.config.d_model
    rng = np.random.default_rng(0)
    params = sae_lib.SAEParams(W_enc=jnp.zeros((d, 5)), b_enc=jnp.zeros(5), b_dec=jnp.zeros(d), out_norm_factor=2.0,
                               W_dec=jnp.asarray(rng.normal(0, 1, (5, d)), jnp.float32))
    fx = dashboards.logit_effects(ck, params, 3, n=5)
    W_U = w["model.embed_tokens.weight"] if tied else w["lm_head.weight"]
    expected = W_U @ (np.asarray(params.W_dec)[3] / 2.0 * w["model.norm.weight"])
    order = np.argsort(-expected)
    np.testing.assert_allclose([v for _, v in fx.top], expected[order[:5]], rtol=1e-4)
    np.testing.assert_allclose([v for _, v in fx.bottom], expected[order[::-1][:5]], rtol=1e-4)
    assert [t for t, _ in fx.top] == [ck.tokenizer.decode([int(i)]) for i in order[:5]]


def test_accuracies_are_read_from_the_claims_report_for_that_feature_only(tmp_path):
    path = tmp_path / "claims.json"
    path.write_text(json.dumps([
        {"claim": "C3-a", "value": 0.41, "n": 150, "ci": [0.33, 0.49], "verdict": "holds", "details": {"feature": 7}},
        {"claim": "C3-b", "value": 0.3, "n": 150, "ci": None, "verdict": "holds", "details": {"feature": 8}},
        {"claim": "C5-x", "value": 1, "n": None, "ci": None, "verdict": "holds", "details": {}},
    ]))
    got = dashboards.accuracies_from_claims(path, 7)
    assert list(got) == ["C3-a"] and got["C3-a"].startswith("0.41 [0.33, 0.49] (n=150")
    assert dashboards.accuracies_from_claims(tmp_path / "absent.json", 7) == {}


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="Chromium not installed (Debian: apt-get install -y chromium)")
def test_the_page_opens_in_headless_chromium_and_renders(tmp_path):
    """Opens the dashboard in headless Chromium: the DOM it builds holds the contexts and the decoded histogram,
    and a screenshot is kept at reports/dashboard-screenshot.png."""
    d = dashboards.dashboard_of(_study(), profile="test")
    html_path, _ = dashboards.write_dashboard(d, tmp_path)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--window-size=1200,1600"]
    shot = REPO / "reports" / "dashboard-screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    url = html_path.as_uri()
    subprocess.run([chromium(), *flags, f"--screenshot={shot}", url], check=True, capture_output=True, timeout=120)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 10_000
    dom = subprocess.run([chromium(), *flags, "--dump-dom", url], check=True, capture_output=True, timeout=120, text=True).stdout
    assert "Top 4 activating contexts" in dom and dom.count('class="tok"') == sum(len(c.tokens) for c in d.contexts)
    import matplotlib.image

    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (1600, 1200) and image[..., :3].std() > 0.05  # not a blank page
