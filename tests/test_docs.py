"""The documentation lives in the repository: nothing points outside it, every link and anchor
resolves, and the README stays a short guide."""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Background notes some sessions had beside the repository; the repository must not need them.
OUTSIDE = re.compile(r"PAPER\.md|FINDINGS\.md|\.\./shared")
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_CITATION = re.compile(r"\b(docs/[\w.-]+\.md)(#[\w-]+)?")


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out if os.path.isfile(os.path.join(ROOT, f))]


def _text(path: str) -> str | None:
    try:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:  # images and other binary files
        return None


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: str) -> set[str]:
    text, fenced, out = _text(path) or "", False, set()
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def _check(target: str, source: str) -> str | None:
    """None if `target` (path[#anchor], relative to `source`'s directory) resolves, else why."""
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(os.path.dirname(source), path)) if path else source
    if not os.path.exists(os.path.join(ROOT, full)):
        return f"{source}: {target} -> {full} does not exist"
    if anchor and full.endswith(".md") and anchor not in anchors(full):
        return f"{source}: {target} -> no heading #{anchor} in {full}"
    return None


def test_slugs_follow_github():
    assert slug("Training: continued pre-training, then SFT") == \
        "training-continued-pre-training-then-sft"
    assert slug("The demo (embedded skills, k = F/4)") == "the-demo-embedded-skills-k--f4"
    assert slug("Does the method win? `ifp compare`") == "does-the-method-win-ifp-compare"


def test_no_tracked_file_refers_outside_the_repository():
    me = os.path.relpath(__file__, ROOT)
    hits = [f"{f}:{i}" for f in _tracked() if f != me and (t := _text(f)) is not None
            for i, line in enumerate(t.splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, "files citing notes outside the repository: " + ", ".join(hits)


def test_the_readme_is_a_short_guide_with_the_two_commands():
    text = _text("README.md")
    assert len(text.splitlines()) <= 250
    assert "make demo" in text and "make test" in text


def test_every_markdown_link_resolves():
    pages = ["README.md"] + [f for f in _tracked() if f.startswith("docs/") and f.endswith(".md")]
    broken = [why for page in pages for target in MD_LINK.findall(_text(page))
              if "://" not in target and not target.startswith("mailto:")
              and (why := _check(target, page))]
    assert not broken, "; ".join(broken)


def test_every_docs_citation_in_the_code_resolves():
    broken = [why for f in _tracked() if f.endswith(".py") and (t := _text(f))
              for path, anchor in CODE_CITATION.findall(t)
              if (why := _check(path + anchor, "README.md"))]
    assert not broken, "; ".join(broken)
