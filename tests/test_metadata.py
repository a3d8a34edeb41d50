import json
import unicodedata

import pytest

from nbutils.core.errors import UserError
from nbutils.tokenize import metadata


def _jsonl(*records):
    return "\n".join(json.dumps(r) for r in records) + "\n"


def test_fold_puts_audiocraft_fields_into_the_text():
    record = {"description": "lofi beat.", "genre": "hip hop", "moods": ["calm", "warm"],
              "instrument": "piano", "bpm": 85.0, "key": "A minor", "title": "ignored"}
    assert metadata.fold(record) == ("lofi beat. Genre: hip hop. Moods: calm, warm. Instrument: piano. 85 bpm. "
                                     "Key: A minor")
    assert metadata.fold({"genre": "jazz"}) == "Genre: jazz"  # no description: the fields alone
    assert metadata.fold({"text": "from text"}) == "from text"
    assert metadata.fold({"description": " ", "moods": []}) == ""


def test_each_source_and_the_precedence_between_them(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(_jsonl(
        {"path": "all.wav", "description": "outside jsonl"},
        {"path": "batch.zip/prefixed.wav", "description": "outside jsonl, with the zip name"},
        {"path": "blank.wav", "description": ""},
    ))
    (tmp_path / "metadata.json").write_text(json.dumps([{"audio": "json.wav", "text": "outside json"}]))
    outside = metadata.Outside.load(tmp_path)
    texts = {
        "metadata.jsonl": _jsonl({"path": "all.wav", "description": "inside jsonl (loses)"},
                                 {"path": "inner.wav", "description": "inside jsonl"}),
        "sub/metadata.json": json.dumps([{"audio": "rel.wav", "text": "relative to its folder"}]),
        "all.json": json.dumps({"description": "sidecar (loses)"}),
        "side.json": json.dumps({"description": "sidecar", "bpm": 90}),
        "side.txt": "txt (loses)",
        "t/note.txt": "  a\n txt   file ",
        "blank.txt": "blank falls through to txt",
        "bad.json": "{broken",
        "bad.txt": "txt after a broken sidecar",
    }
    catalog = metadata.Catalog("batch.zip", outside, texts, default="trigger")
    expect = {
        "all.wav": ("outside jsonl", "metadata.jsonl"),
        "prefixed.wav": ("outside jsonl, with the zip name", "metadata.jsonl"),
        "inner.wav": ("inside jsonl", "metadata.jsonl"),
        "json.wav": ("outside json", "metadata.json"),
        "sub/rel.wav": ("relative to its folder", "metadata.json"),
        "side.wav": ("sidecar. 90 bpm", "sidecar"),
        "t/note.wav": ("a txt file", "txt"),
        "blank.wav": ("blank falls through to txt", "txt"),
        "bad.wav": ("txt after a broken sidecar", "txt"),
        "other.wav": ("trigger", "default"),
    }
    for path, want in expect.items():
        assert catalog.lookup(path) == want, path
    assert catalog.counts == {"metadata.jsonl": 3, "metadata.json": 2, "sidecar": 1, "txt": 3, "default": 1}
    assert metadata.Catalog("batch.zip", outside, {}, default="").find("x.wav") == ("", "none")


def test_prefix_of_another_zip_does_not_leak(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(_jsonl({"path": "other_batch/x.wav", "description": "theirs"}))
    catalog = metadata.Catalog("batch_0001.zip", metadata.Outside.load(tmp_path), {}, default="mine")
    assert catalog.lookup("x.wav") == ("mine", "default")
    catalog = metadata.Catalog("other_batch.zip", metadata.Outside.load(tmp_path), {}, default="mine")
    assert catalog.lookup("x.wav") == ("theirs", "metadata.jsonl")


def test_paths_match_across_unicode_forms_and_separators(tmp_path):
    nfd = unicodedata.normalize("NFD", "Café/été.wav")
    (tmp_path / "metadata.jsonl").write_text(_jsonl({"path": nfd, "description": "accents"},
                                                    {"path": ".\\win\\a.wav", "description": "windows"}))
    catalog = metadata.Catalog("b.zip", metadata.Outside.load(tmp_path), {})
    assert catalog.lookup("Café/été.wav") == ("accents", "metadata.jsonl")
    assert catalog.lookup("win/a.wav") == ("windows", "metadata.jsonl")


def test_bad_lines_are_counted_not_fatal(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"path": "a.wav", "description": "ok"}\n{oops\n{"no_path": 1}\n\n')
    outside = metadata.Outside.load(tmp_path)
    assert outside.jsonl == {"a.wav": "ok"} and outside.bad_lines == 2


@pytest.mark.parametrize("line, reason", [
    ("{'path': 'a.wav', 'description': 'x'}", "not JSON: Expecting property name enclosed in double quotes at "
                                              "column 2 (JSON needs double quotes, no trailing commas)"),
    ('{"path": "a.wav", "description": "x",}', "not JSON: Expecting property name enclosed in double quotes at "
                                               "column 38 (JSON needs double quotes, no trailing commas)"),
    ('{"description": "no path"}', 'no "path"'),
    ('["a.wav", "x"]', "a JSON list, not an object {...}"),
])
def test_bad_lines_say_which_line_and_why(tmp_path, line, reason):
    (tmp_path / "metadata.jsonl").write_text(_jsonl({"path": "ok.wav", "description": "ok"}) + line + "\n" + line)
    bad = metadata.Outside.load(tmp_path).bad
    assert [b.to_dict() for b in bad] == [{"file": str(tmp_path / "metadata.jsonl"), "count": 2, "first": "line 2",
                                           "reason": reason}]
    assert bad[0].message().startswith(f"{tmp_path / 'metadata.jsonl'}: 2 unusable lines skipped (first: line 2: ")


def test_bad_lines_inside_a_zip_are_named_by_file(tmp_path):
    texts = {"sub/metadata.jsonl": "{oops\n", "metadata.json": json.dumps([{"audio": "a.wav"}, {"text": "x"}])}
    catalog = metadata.Catalog("b.zip", metadata.Outside(), texts)
    assert [(b.file, b.count, b.first) for b in catalog.bad] == [("sub/metadata.jsonl", 1, "line 1"),
                                                                 ("metadata.json", 1, "item 2")]
    assert catalog.bad_lines == 2


def test_explicit_metadata_file_wins_and_must_exist(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(_jsonl({"path": "a.wav", "description": "beside"}))
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"items": [{"audio": "a.wav", "text": "explicit"}]}))
    outside = metadata.Outside.load(tmp_path, mine)
    assert metadata.Catalog("b.zip", outside, {}).lookup("a.wav") == ("explicit", "metadata.json")
    with pytest.raises(UserError, match="does not exist"):
        metadata.Outside.load(tmp_path, tmp_path / "missing.jsonl")


def test_a_metadata_json_that_is_not_json_is_reported_as_not_read_at_all(tmp_path):
    trailing_comma = '[\n {"audio": "a.wav", "text": "x"},\n {"audio": "b.wav", "text": "y"},\n]\n'
    (tmp_path / "metadata.json").write_text(trailing_comma)
    outside = metadata.Outside.load(tmp_path)
    assert outside.json_list == {}
    message = outside.bad[0].message()
    assert "metadata.json: not read at all (line 4: not JSON" in message and "none of its entries used" in message


@pytest.mark.parametrize("value, reason", [
    ('{"nested": [1, 2]}', '"description" is a JSON object, not text'),
    ("true", '"description" is true, not text'),
    ("NaN", '"description" is the number nan, not text'),
    ("42", '"description" is a number, not text'),
    ('["a", "b"]', '"description" is a JSON list, not text'),
])
def test_descriptions_that_are_not_text_are_refused_by_line_never_turned_into_reprs(tmp_path, value, reason):
    (tmp_path / "metadata.jsonl").write_text(_jsonl({"path": "ok.wav", "description": "ok"})
                                             + '{"path": "bad.wav", "description": %s}\n' % value)
    outside = metadata.Outside.load(tmp_path)
    assert outside.jsonl == {"ok.wav": "ok"}
    assert [(b.count, b.first, b.reason) for b in outside.bad] == [(1, "line 2", reason)]


def test_folded_fields_must_be_text_too_but_lists_of_text_and_numeric_bpm_are_fine():
    assert metadata.fold({"description": "x", "moods": ["calm", "warm"], "bpm": 90}) == "x. Moods: calm, warm. 90 bpm"
    for record, reason in [({"genre": {"a": 1}}, '"genre" is a JSON object'),
                           ({"moods": [1, 2]}, '"moods" is a JSON list'),
                           ({"bpm": float("inf")}, '"bpm" is the number inf'), ({"key": True}, '"key" is true')]:
        with pytest.raises(metadata.NotText, match=reason):
            metadata.fold(record)


def test_long_descriptions_are_trimmed_at_a_word_with_a_note_and_surrogates_replaced():
    long_text = "calm piano " * 1000
    texts = {"metadata.jsonl": _jsonl({"path": "a.wav", "description": long_text},
                                      {"path": "b.wav", "description": "lone \ud800 surrogate"})}
    catalog = metadata.Catalog("z.zip", metadata.Outside(), texts)
    text, source = catalog.lookup("a.wav")
    assert source == "metadata.jsonl" and len(text) <= metadata.MAX_DESCRIPTION_CHARS
    assert long_text.startswith(text) and long_text[len(text)] == " " and type(text) is str  # cut at a word
    assert catalog.notes == [{"path": "a.wav", "reason": f"description trimmed from 10,999 to {len(text):,} "
                                                         "characters (limit 1,000)"}]
    assert catalog.lookup("b.wav") == ("lone \ufffd surrogate", "metadata.jsonl")


def test_json_files_with_huge_integers_or_deep_nesting_say_where(tmp_path):
    (tmp_path / "metadata.json").write_text('[\n{"audio": "a.wav", "text": "x"},\n{"audio": "b.wav", "n": %s}\n]'
                                            % ("9" * 5000))
    outside = metadata.Outside.load(tmp_path)
    assert outside.json_list == {} and outside.bad[0].first == "whole file, line 3"
    assert outside.bad[0].reason == "refused: an integer with 5000 digits (more than 100)"
    catalog = metadata.Catalog("z.zip", metadata.Outside(), {"a.json": "[" * 100_000 + "]" * 100_000, "a.txt": "txt"})
    assert catalog.lookup("a.wav") == ("txt", "txt")
    assert catalog.notes == [{"path": "a.json", "reason": "sidecar not used: line 1: refused: nested deeper than "
                                                          "64 levels"}]
