"""The built-in synthetic geo-tagged world (``vgssl synth``).

A procedural city at real UTM coordinates (zone 32T, Turin) rendered by a numpy
ray-caster into street-level views, written in the deep visual geo-localization
benchmark's folder layout. It exists so that every method of the suite can be trained,
evaluated and replayed on a robot end to end without downloading a dataset: database and
queries differ by time of day, weather, season and traffic the way real captures do.

    from vgssl_core.synth import generate_world, City, Condition
    generate_world("worlds/tiny", preset="tiny", seed=0)
    city = City(seed=0, district=0, blocks=(3, 3))
    rgb, mask = city.render(*city.route(2.0)[0], Condition(), np.random.default_rng(0))
"""

from vgssl_core.synth.city import City
from vgssl_core.synth.classes import CLASS_NAMES
from vgssl_core.synth.conditions import Condition, sample_condition
from vgssl_core.synth.presets import PRESETS, SPLITS, Preset
from vgssl_core.synth.writer import generate_world

__all__ = ["CLASS_NAMES", "City", "Condition", "PRESETS", "Preset", "SPLITS", "generate_world", "sample_condition"]
