"""Feature dashboards: self-contained HTML + markdown, logit effects through the (tied or separate) unembedding
computed as numpy does from the weights written, accuracies read from a claims report; a slow test opens the
page in headless Chromium and keeps a screenshot under reports/."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import urllib.parse

import jax.numpy as jnp
import numpy as np
import pytest
from checkpoints import tiny_gguf

from harness.model.gguf_reader import read_gguf
from harness.reporting import dashboards
from harness.sae import sae as sae_lib
from harness.studies import feature_contexts

REPO = pathlib.Path(__file__).resolve().parent.parent


def _study(seed: int = 0) -> feature_contexts.FeatureStudy:
    """A small synthetic study: plain text where the feature ramps up on one sequence, MC prompts at zero."""
    rng = np.random.default_rng(seed)
    plain = rng.integers(0, 50, (5, 12))
    acts = [np.zeros(12, np.float32) for _ in range(5)]
    acts[2][4:8] = [0.5, 1.0, 3.0, 0.2]
    acts[4][9] = 1.5
    ps = feature_contexts.plain_token_set(plain, acts, note="synthetic plain text")
    mc = feature_contexts.MCSequences(ids=tuple(rng.integers(0, 50, 8) for _ in range(4)), counted=tuple(np.ones(8, bool) for _ in range(4)),
                        answer=tuple(np.eye(8, dtype=bool)[7] for _ in range(4)), labels=tuple(f"q0 option {l}" for l in "ABCD"),
                        skipped=(), fmt="letter")
    ms = feature_contexts.mc_token_set(mc, [np.full(8, 0.1 * (k + 1), np.float32) for k in range(4)])
    sets = (ps, ms)
    top = feature_contexts.pooled_top(sets, 4)
    return feature_contexts.FeatureStudy(feature=7, reading="encoder", sets=sets, firing=feature_contexts.firing(sets, feature=7, reading="encoder", top_n=4),
                           contexts=tuple(feature_contexts.contexts(sets, top, lambda t: f"w{t} & <x>\n")))


def test_the_html_page_is_self_contained_and_shows_the_contexts_in_order(tmp_path):
    d = dashboards.dashboard_of(_study(), profile="test", accuracies={"C9-example": "0.5 [0.4, 0.6] (n=100)"})
    html_path, md_path = dashboards.write_dashboard(d, tmp_path / "features")
    page = html_path.read_text()
    assert html_path.name == "feature-7.html" and md_path.name == "feature-7.md"
    assert not re.search(r'src="(?!data:)', page), "the page must not load anything from outside"
    assert re.findall(r'href="([^"]*)"', page) == ["README.md", "feature-7.md"]  # only its index and markdown twin
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
    results = [
        {"claim": "C3-a", "value": 0.41, "n": 150, "ci": [0.33, 0.49], "verdict": "holds", "details": {"feature": 7}},
        {"claim": "C3-b", "value": 0.3, "n": 150, "ci": None, "verdict": "holds", "details": {"feature": 8}},
        {"claim": "C5-x", "value": 1, "n": None, "ci": None, "verdict": "holds", "details": {}},
    ]
    path.write_text(json.dumps({"schema_version": 2, "results": results}))
    got = dashboards.accuracies_from_claims(path, 7)
    assert list(got) == ["C3-a"] and got["C3-a"].startswith("0.41 [0.33, 0.49] (n=150")
    assert dashboards.accuracies_from_claims(tmp_path / "absent.json", 7) == {}
    path.write_text(json.dumps(results))  # the schema-1 list: no figures read from it
    assert dashboards.accuracies_from_claims(path, 7) == {}


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="Chromium not installed (Debian: apt-get install -y chromium)")
def test_the_page_opens_in_headless_chromium_and_renders(tmp_path):
    """Opens the dashboard in headless Chromium: the DOM it builds holds the contexts and the decoded histogram,
    and a screenshot is kept at reports/dashboard-screenshot.png."""
    d = dashboards.dashboard_of(_study(), profile="test")
    html_path, _, _ = _report_tree(tmp_path)
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
    hrefs = re.findall(r'href="([^"]+)"', dom)
    assert hrefs == ["README.md", "feature-7.md"]
    for href in hrefs:  # follow every link the browser shows: it must open a page that holds what the link promises
        target = urllib.parse.urljoin(url, href)
        assert pathlib.Path(urllib.parse.urlparse(target).path).is_file(), target
        shown = subprocess.run([chromium(), *flags, "--dump-dom", target], check=True, capture_output=True, timeout=120,
                               text=True).stdout
        assert ("Feature dashboards" if href == "README.md" else "# Feature 7") in shown


def _report_tree(root: pathlib.Path):
    """reports/<profile>/README.md with the dashboards section, features/feature-7.{html,md} and features/README.md."""
    base = root / "test-profile"
    d = dashboards.dashboard_of(_study(), profile="test")
    html_path, md_path = dashboards.write_dashboard(d, base / "features")
    links = [(7, "synthetic", html_path)]
    (base / "README.md").write_text("# report\n\n" + dashboards.section("test", links, base))
    index = dashboards.write_index("test", links, base / "features", report=base / "README.md")
    return html_path, md_path, index


def _links(path: pathlib.Path) -> list[str]:
    text = path.read_text()
    found = re.findall(r'href="([^"]+)"', text) if path.suffix == ".html" else re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in found if not link.startswith("data:")]


def test_every_link_of_every_page_resolves_from_where_the_page_lives(tmp_path):
    html_path, md_path, index = _report_tree(tmp_path)
    pages = [tmp_path / "test-profile" / "README.md", index, html_path, md_path]
    checked = 0
    for page in pages:
        links = _links(page)
        assert links, f"{page.name} links nowhere"
        for link in links:
            assert not link.startswith(("/", "http")), f"{page}: {link} is not a relative link"
            assert (page.parent / link).is_file(), f"{page}: link {link} does not resolve"
            checked += 1
    assert checked >= 9
    assert "(feature-7.html)" in index.read_text() and "(features/feature-7.html)" in pages[0].read_text()


def test_contexts_decoded_in_context_keep_sentencepiece_spaces(tmp_path):
    import functools

    import standins

    from harness.model.hf_reader import read_hf_tokenizer
    from harness.prompts.formats import token_texts

    tok = read_hf_tokenizer(standins.phi3_tokenizer_files(tmp_path / "tok"))
    text = "The heart pumps blood. The first time the students met the question, they read it twice."
    ids = np.array(tok.encode(text, add_bos=False))
    peak = len(tok.encode("The heart pumps blood. The first time", add_bos=False)) - 1
    acts = np.zeros(len(ids), np.float32)
    acts[peak] = 2.0
    sets = (feature_contexts.plain_token_set([ids], [acts], note="one sentence"),)
    top = feature_contexts.pooled_top(sets, 1)
    per_token = feature_contexts.contexts(sets, top, lambda t: tok.decode([t]), before=3, after=2)[0]
    in_context = feature_contexts.contexts(sets, top, lambda t: tok.decode([t]), before=3, after=2,
                             texts=functools.partial(token_texts, tok))[0]
    assert "".join(per_token.tokens) == ".Thefirsttimethestudents"  # the bug: SentencePiece spaces lost
    assert "".join(in_context.tokens) == ". The first time the students"
    d = dashboards.Dashboard(feature=1, profile="t", reading="encoder", contexts=(in_context,), sets=sets)
    page = dashboards.render_html(d, b"png")
    spans = re.findall(r'<span class="tok"[^>]*>([^<]*)</span>', page)
    assert "".join(spans) == ". The first time the students"
    assert "**[time]**" in dashboards.render_markdown(d, "h.png") and " **[time]**" in dashboards.render_markdown(d, "h.png")


def test_subject_plot_accepts_wilson_bounds_off_by_float_error(tmp_path):
    from harness.reporting import plots
    from harness.scoring.stats import Accuracy

    off = Accuracy(value=0.0, k=0.0, n=7, lo=2.8e-17, hi=0.35)     # wilson(0, 7) as it was: lo above the value
    top = Accuracy(value=1.0, k=9.0, n=9, lo=0.7, hi=1.0 - 1e-16)  # wilson(n, n): hi just below 1
    np.testing.assert_allclose(plots.error_bars([off, top]), [[0.0, 0.3], [0.35, 0.0]], atol=1e-12)
    assert plots.error_bars([off, top]).min() == 0.0  # clamped, never negative
    path = plots.subject_accuracies({"feature": {"a": off, "b": top}}, tmp_path / "s.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    from harness.errors import InputError

    with pytest.raises(InputError, match="excludes its value"):
        plots.error_bars([Accuracy(value=0.2, k=1.0, n=5, lo=0.3, hi=0.5)])


def test_a_dashboard_written_alone_still_has_an_index_to_link_to(tmp_path):
    html_path, md_path = dashboards.write_dashboard(dashboards.dashboard_of(_study(), profile="test"), tmp_path)
    for page in (html_path, md_path):
        assert all((page.parent / link).is_file() for link in _links(page))
    assert "(feature-7.html)" in (tmp_path / "README.md").read_text()


def test_importing_and_drawing_leaves_the_global_matplotlib_backend_alone(tmp_path):
    # A fresh interpreter: pyplot or a backend chosen by another test in this process would hide the switch.
    code = (
        "import sys, matplotlib, numpy as np\n"
        "from harness.reporting import plots, dashboards, compile_report\n"
        f"plots.tie_rule_difference(np.array([.3, .5]), np.array([.3, .6]), __import__('pathlib').Path({str(tmp_path)!r}) / 't.png', title='t')\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    env = {**__import__("os").environ, "MPLBACKEND": "pdf", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([__import__("sys").executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["pdf", "False"]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
