"""Export formats, policy and the HTML-safe markdown, on pairs shaped like the pipeline's."""

from __future__ import annotations

import html.parser
import io
import json

import msgspec
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from service.errors import InvalidInput
from service.stages.export import EXPORTERS, export, label_config, safe_markdown
from service.stages.export.labelstudio import CONTROLS, OBJECT
from service.wire.export import FORMATS, MODEL_VERSION, ExportOptions, Review
from tests.stages.test_export_samples import XSS_ANSWER, mixed, pair


def decode(body: bytes) -> object:
    return msgspec.json.decode(body)


def jsonl(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.decode().splitlines()]


def test_every_format_has_an_exporter() -> None:
    assert set(EXPORTERS) == set(FORMATS)


def test_unknown_format_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput) as err:
        export("csv", mixed())
    assert err.value.field == "format"
    for name in FORMATS:
        assert name in err.value.detail


def test_label_studio_tasks_carry_pair_prefill_and_evidence() -> None:
    pairs = mixed()
    result = export("label-studio", pairs)
    tasks = decode(result.body())
    assert isinstance(tasks, list) and len(tasks) == len(pairs) == result.exported
    assert tasks[0]["data"]["pair_id"] == "p-bad-1"  # failed first
    assert all("id" not in t and "id" not in t["data"] for t in tasks)
    by_id = {t["data"]["pair_id"]: t for t in tasks}
    bad = by_id["p-bad-1"]["data"]
    assert bad["verdict"] == "runtime_error" and bad["flagged"] is True
    assert "object 'y' not found" in bad["evidence_md"] and "print(y)" in bad["evidence_md"]
    assert "[1] 1.5" in bad["evidence_md"]
    assert by_id["p-ok-1"]["data"]["model"] == "openai/gpt-4o-mini"
    for t in tasks:
        (prediction,) = t["predictions"]
        assert prediction["model_version"] == MODEL_VERSION
        (result_item,) = prediction["result"]
        assert result_item["value"]["text"] == [t["data"]["pair"]["answer"]]


def test_label_studio_predictions_name_controls_of_the_config() -> None:
    config = label_config("en")
    tasks = decode(export("label-studio", mixed()).body())
    for t in tasks:
        for item in t["predictions"][0]["result"]:
            assert CONTROLS[item["from_name"]] == item["type"]
            assert f'name="{item["from_name"]}" toName="{item["to_name"]}"' in config
            assert item["to_name"] == OBJECT


def test_label_config_is_xml_with_localised_labels_and_stable_values() -> None:
    import xml.etree.ElementTree as ET

    for locale, accept in (("en", "Accept"), ("ja", "承認")):
        root = ET.fromstring(label_config(locale))
        choices = root.findall(".//Choice")
        assert [c.get("alias") for c in choices] == ["accept", "reject", "needs-fix"]
        assert choices[0].get("value") == accept


def test_review_formats_filter_by_verdict() -> None:
    result = export("label-studio", mixed(), options=ExportOptions(verdicts=["runtime_error", "unevaluated"]))
    ids = [t["data"]["pair_id"] for t in decode(result.body())]
    assert ids == ["p-bad-1", "p-none"]
    assert result.left_out.filtered == 4


def test_training_formats_leave_out_flagged_and_rejected_and_say_so() -> None:
    reviews = [Review(pair_id="p-ok-2", decision="reject", comment="wrong test")]
    result = export("openai", mixed(), reviews)
    rows = jsonl(result.body())
    assert len(rows) == result.exported == 4
    assert (result.left_out.flagged, result.left_out.rejected) == (1, 1)
    everything = export(
        "openai", mixed(), reviews, ExportOptions(include_flagged=True, include_rejected=True)
    )
    assert everything.exported == 6 and everything.left_out.total == 0


def test_openai_alpaca_sharegpt_shapes() -> None:
    p = pair("p1", question="Q?", answer="A.")
    opts = ExportOptions(system_prompt="You write R.")
    (openai,) = jsonl(export("openai", [p], options=opts).body())
    assert openai == {
        "messages": [
            {"role": "system", "content": "You write R."},
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": "A."},
        ]
    }
    (alpaca,) = jsonl(export("alpaca", [p]).body())
    assert alpaca == {"instruction": "Q?", "input": "", "output": "A."}
    (share,) = jsonl(export("sharegpt", [p]).body())
    assert share == {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}


def test_hf_parquet_and_jsonl_hold_the_same_rows() -> None:
    pairs = mixed()
    rows = jsonl(export("hf-jsonl", pairs).body())
    table = pq.read_table(io.BytesIO(export("hf-parquet", pairs).body()))
    assert table.to_pylist() == rows
    assert {r["id"] for r in rows} == {"p-ok-1", "p-ok-2", "p-xss", "p-none", "p-ja"}


def test_hf_card_reports_spec_models_templates_and_verdicts() -> None:
    card = export("hf-card", mixed()).body().decode()
    assert card.startswith("---\n")
    assert "cd" * 32 in card
    assert "openai/gpt-4o-mini: 10" in card
    assert "answer/v1" in card and "question/v1" in card
    assert "passed: 4" in card and "unevaluated: 1" in card
    assert "Left out: 1 flagged" in card


def test_ndjson_lines_match_the_json_body() -> None:
    result = export("label-studio", mixed())
    lines = [json.loads(line) for line in b"".join(result.lines()).splitlines()]
    assert lines == decode(result.body())


# Safety: answers are model output and Label Studio's <Markdown> renders raw HTML.


# What a CommonMark renderer with raw HTML enabled (like Label Studio's) makes of the markdown.
_RENDERER = MarkdownIt("commonmark", {"html": True})
_HARMLESS = {"p", "code", "pre", "strong", "em", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6"}
_HARMLESS |= {"ul", "ol", "li", "blockquote"}


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.bad: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        harmless_attrs = all(k == "class" and (v or "").startswith("language-") for k, v in attrs)
        if tag not in _HARMLESS or not harmless_attrs:
            self.bad.append(f"<{tag} {attrs}>")


def unsafe_tags(markdown: str) -> list[str]:
    """Elements or attributes beyond plain formatting in the rendered HTML: scripts, images, links."""
    parser = _Tags()
    parser.feed(_RENDERER.render(markdown))
    return parser.bad


def test_safe_markdown_neutralises_html_and_links() -> None:
    assert unsafe_tags(XSS_ANSWER) != []  # the renderer would run these as written
    md = safe_markdown(XSS_ANSWER)
    assert unsafe_tags(md) == []
    assert "<code>fit &lt;- lm(y ~ x)</code>" in md
    # Code blocks keep R exactly as written, since renderers never parse code as HTML.
    assert "```r\nx <- c(1, 2, 3)\nif (x[1] < 2) print('<b>ok</b>')\n```" in md


def test_code_block_fence_outgrows_backticks_inside() -> None:
    md = safe_markdown("````\n```\n<script>x</script>\n````")
    assert md.startswith("````\n") and md.endswith("\n````")
    assert "<pre><code>```\n&lt;script&gt;x&lt;/script&gt;\n</code></pre>" in _RENDERER.render(md)


_PIECES = [*"<>`~ab&[]()\\\n !/=\"':", "script", "img", "```", "~~~", "onerror", "javascript", "    "]


@given(st.lists(st.sampled_from(_PIECES), max_size=80).map("".join))
def test_no_unsafe_html_after_rendering(text: str) -> None:
    assert unsafe_tags(safe_markdown(text)) == []


def test_question_and_evidence_fields_are_safe_too() -> None:
    evil = pair("p-e", verdict="runtime_error", flagged=True)
    evil = msgspec.structs.replace(
        evil,
        evaluation=msgspec.structs.replace(
            evil.evaluation, message="<img src=x onerror=alert(1)>", stdout="<script>1</script>"
        ),
    )
    (task,) = decode(export("label-studio", [evil]).body())
    assert unsafe_tags(task["data"]["evidence_md"]) == []
    record = decode(export("argilla", [pair("q", question="<script>alert(1)</script>")]).body())["records"][0]
    assert unsafe_tags(record["fields"]["question"]) == []


def test_training_files_load_with_datasets(tmp_path) -> None:
    import datasets

    pairs = mixed()
    for fmt, name in (("hf-jsonl", "train.jsonl"), ("openai", "openai.jsonl"), ("sharegpt", "sg.jsonl")):
        (tmp_path / name).write_bytes(export(fmt, pairs).body())
    (tmp_path / "train.parquet").write_bytes(export("hf-parquet", pairs).body())
    cache = str(tmp_path / "cache")
    hf = datasets.load_dataset(
        "json", data_files=str(tmp_path / "train.jsonl"), split="train", cache_dir=cache
    )
    pq_ds = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "train.parquet"), split="train", cache_dir=cache
    )
    assert hf.num_rows == pq_ds.num_rows == 5
    assert hf["id"] == pq_ds["id"]
    assert pq_ds[0]["messages"][1]["role"] == "assistant"
    chat = datasets.load_dataset(
        "json", data_files=str(tmp_path / "openai.jsonl"), split="train", cache_dir=cache
    )
    assert chat.column_names == ["messages"]
    sg = datasets.load_dataset("json", data_files=str(tmp_path / "sg.jsonl"), split="train", cache_dir=cache)
    assert sg[0]["conversations"][0]["from"] == "human"
