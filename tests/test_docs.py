"""Docs generated from code stay in step with it."""

from pathlib import Path

from meshcore.flags import ResponseFlag, render_flag_table

ROOT = Path(__file__).resolve().parent.parent


def test_response_flag_table_is_current() -> None:
    text = (ROOT / "docs" / "response-flags.md").read_text(encoding="utf-8")
    assert text == render_flag_table(), "regenerate docs/response-flags.md from render_flag_table()"


def test_every_flag_has_a_unique_code() -> None:
    codes = [flag.value for flag in ResponseFlag]
    assert len(codes) == len(set(codes))


def test_the_mesh_resource_reference_is_current() -> None:
    from meshcore.meshdocs import REGENERATE, render_mesh_reference  # noqa: PLC0415 - this test only

    text = (ROOT / "docs" / "reference" / "mesh.md").read_text(encoding="utf-8")
    assert text == render_mesh_reference(), (
        f"docs/reference/mesh.md is out of date; regenerate it: {REGENERATE}"
    )
