import pytest

from lightning_convshare.errors import ConfigError, UnknownNameError
from lightning_convshare.registry import Registry


def make():
    reg = Registry("widget")

    @reg.register("round_widget")
    def round_widget(size: int = 1, color: str = "red"):
        return (size, color)

    @reg.register("square_widget")
    class Square:
        def __init__(self, side: int):
            self.side = side

    return reg


def test_register_get_names_and_pattern():
    reg = make()
    assert reg.names() == ["round_widget", "square_widget"]
    assert reg.names("sq*") == ["square_widget"]
    assert reg.get("round_widget")() == (1, "red")
    assert "round_widget" in reg and len(reg) == 2


def test_unknown_name_suggests_close_match():
    with pytest.raises(UnknownNameError, match=r"unknown widget 'round_widgt'. Did you mean 'round_widget'.*Available: round_widget, square_widget"):
        make().get("round_widgt")
    with pytest.raises(KeyError):  # still a KeyError for callers that expect one
        make().get("nothing")


def test_duplicate_registration_is_refused():
    reg = make()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("round_widget")(lambda: None)


def test_create_from_name_or_mapping_and_bad_options():
    reg = make()
    assert reg.create("round_widget") == (1, "red")
    assert reg.create({"name": "round_widget", "size": 3}) == (3, "red")
    assert reg.create({"name": "square_widget"}, side=4).side == 4
    with pytest.raises(ConfigError, match=r"widget 'round_widget' does not accept.*takes \['size', 'color'\]"):
        reg.create({"name": "round_widget", "colour": "blue"})
    with pytest.raises(ConfigError, match="needs a 'name'"):
        reg.create({"size": 2})
