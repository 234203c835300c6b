"""The synthetic world's caption grammar, which training and benchmarks judge truth by."""

from __future__ import annotations

from mmsearch import world


def test_a_caption_pins_down_what_it_names_and_a_sound_has_no_background() -> None:
    text = "a photo of two small red circles on a black background"
    named = {"count": 2, "size": "small", "colour": "red", "shape": "circle", "background": "black"}
    assert world.parse_caption(text) == named
    assert world.parse_caption(text, "audio") == {k: v for k, v in named.items() if k != "background"}
    assert world.parse_caption("the sound of a blue star", "audio") == {"count": 1, "colour": "blue", "shape": "star"}
