"""Model configs that round-trip to JSON, shared by every model family (as diffusers' configs do).

A family's config is a :func:`model_config` dataclass that subclasses :class:`ModelConfig`, sets ``family`` (the
name written into ``config.json``, e.g. ``"ddpm"``, ``"gan"``, ``"ldm"``, ``"detector"``), ``PRESETS`` (size
presets ``tiny`` / ``small`` / ``base``) and ``version``, and implements :meth:`validate` with
plain-language messages.  It always has ``image_size`` and ``channels`` (they come from the
training store), so a checkpoint says which images it can make: ``image_shape`` is
``(C, S, S)`` for a family of 2D slices and ``(C, S, S, S)`` for one of 3D volumes
(``SPATIAL_DIMS``, 3 for ``ldm3d``).

A config may hold sections that are configs of their own (``NESTED``), as a diffusion model
holds its noise schedule apart from its UNet (:class:`~workbench.models.scheduler.SchedulerConfig`
in ``"scheduler"``).  A section's options are set by their plain names (``beta_schedule=...``)
like the family's own; configs written before a section existed held its keys at the top level
and are moved into the section when read (:meth:`ModelConfig.from_dict`).

>>> from workbench.models import DDPMConfig
>>> c = DDPMConfig.preset("tiny", image_size=64, channels=["t1", "flair"])
>>> DDPMConfig.from_json(c.to_json()) == c
True
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

from ..errors import CheckpointError, WorkbenchError


class _PresetConstructor:
    """``Config.preset("tiny", ...)`` on the class; the ``preset`` field's value on an instance.

    Every config has a field named ``preset`` (the preset it was made from, written to JSON) and
    the friendly constructor ``Config.preset(name, ...)``; this descriptor lets both share the name.
    """

    def __get__(self, obj, owner):
        if obj is None:
            return owner.from_preset
        return obj.__dict__.get("preset")


def model_config(cls):
    """Class decorator for a family's config: a dataclass whose ``preset`` is also a constructor."""
    cls = dataclasses.dataclass(cls)
    cls.preset = _PresetConstructor()
    return cls


@dataclasses.dataclass
class ModelConfig:
    """Base of every family's config: presets, validation, JSON round trip with clear errors."""

    #: family name written into config.json ("ddpm", "gan", "ldm").
    family: ClassVar[str] = "model"
    #: config format version; older versions are read with the new fields at their defaults.
    VERSION: ClassVar[int] = 1
    #: 2: the family makes and trains on 2D slices (C, H, W); 3: on 3D volumes (C, D, H, W), cubes.
    SPATIAL_DIMS: ClassVar[int] = 2
    #: size presets: name -> field values.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: fields that hold tuples (JSON lists) and are turned back into tuples.
    TUPLE_FIELDS: ClassVar[tuple[str, ...]] = ("channels",)
    #: fields that hold a section with a config class of its own (``to_dict`` / ``from_dict`` /
    #: ``validate(bad)`` / ``option_names``), e.g. ``{"scheduler": SchedulerConfig}``.
    NESTED: ClassVar[dict[str, type]] = {}

    # -- presets and checks ----------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, *, image_size: int, channels, **overrides):
        """A config from a size preset (``"tiny"``, ``"small"``, ``"base"``), with overrides."""
        if name not in cls.PRESETS:
            raise WorkbenchError(f"unknown {cls.family.upper()} preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        names = set(cls.option_names())
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise WorkbenchError(f"unknown {cls.family.upper()} config option(s) {unknown}; valid options are {sorted(names)}")
        values = {**cls.PRESETS[name], **overrides}
        for section, section_cls in cls.NESTED.items():  # a section's options go into the section
            mine = {k: values.pop(k) for k in section_cls.option_names() if k in values}
            if mine:
                values[section] = dataclasses.replace(cls.section_default(section), **mine)
        config = cls(image_size=image_size, channels=channels, preset=name, **values)
        return config.validate()

    @classmethod
    def option_names(cls) -> list[str]:
        """Options a user may set: every field but image_size, channels, preset and version, with
        the options of each section (e.g. ``beta_schedule``) in place of the section's name."""
        names = []
        for f in dataclasses.fields(cls):
            if f.name in cls.NESTED:
                names += cls.NESTED[f.name].option_names()
            elif f.name not in ("image_size", "channels", "preset", "version"):
                names.append(f.name)
        return names

    @classmethod
    def section_default(cls, name: str):
        """The family's default value of the section ``name`` (e.g. its default noise schedule)."""
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image the model makes: ``(C, S, S)``, or ``(C, S, S, S)`` for a 3D family."""
        return (self.in_channels, *(self.image_size,) * self.SPATIAL_DIMS)

    def validate(self):
        """Raise :class:`WorkbenchError` with a plain message if the settings cannot work."""
        if not isinstance(self.image_size, int) or self.image_size < 1:
            self._bad(f"image_size must be a positive integer, got {self.image_size!r}")
        if len(self.channels) < 1:
            self._bad("channels is empty; the model needs at least one channel")
        for name in self.NESTED:
            getattr(self, name).validate(self._bad)
        return self

    def _bad(self, msg: str):
        raise WorkbenchError(f"{self.family.upper()} config: {msg}")

    def __post_init__(self):
        # JSON gives lists: tuple fields become tuples again, of channel names or of integers
        # (every other tuple field is a list of layer widths)
        for name in self.TUPLE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(str(v) if name == "channels" else int(v) for v in value))
        for name, section_cls in self.NESTED.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, section_cls.from_dict(value, source=f"{self.family} config {name!r}"))

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"family": self.family}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if f.name in self.NESTED else list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def migrate(cls, d: dict, version: int) -> dict:
        """Bring a config dict of an older ``version`` to the current layout (before it is checked).

        The default moves the keys of each section that an older config held at the top level
        (e.g. a DDPM's ``beta_schedule`` before the noise schedule had its own section) into the
        section; keys it lacks take the family's defaults.  Families override it for other changes.
        """
        for name, section_cls in cls.NESTED.items():
            if name in d or version >= cls.VERSION:
                continue
            flat = {k: d.pop(k) for k in section_cls.option_names() if k in d}
            if flat:
                d[name] = {**cls.section_default(name).to_dict(), **flat}
        return d

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config"):
        """Rebuild a config from :meth:`to_dict` output; another family, unknown or missing keys are errors."""
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(d).__name__}")
        d = dict(d)
        family = d.pop("family", "ddpm")  # version-1 DDPM configs were written before families existed
        if family != cls.family:
            raise CheckpointError(f"{source}: this is a {family!r} model, not a {cls.family!r} model")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        version = d.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= cls.VERSION:
            raise CheckpointError(f"{source}: config version {version!r}; this workbench reads {cls.family} "
                                  f"configs of versions 1..{cls.VERSION}")
        d = cls.migrate(d, version)
        unknown = sorted(set(d) - set(fields))
        has_default = {n for n, f in fields.items()
                       if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        # an older version may lack fields added since; they take their defaults
        missing = [n for n in fields if n not in d and not (version < cls.VERSION and n in has_default)]
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unknown:
                parts.append(f"unknown keys {unknown}")
            raise CheckpointError(f"{source}: not a {cls.family} config written by this workbench ({'; '.join(parts)})")
        d["version"] = cls.VERSION
        for name, section_cls in cls.NESTED.items():
            if name in d:
                d[name] = section_cls.from_dict(d[name], source=f"{source} ({name!r})")
        try:
            return cls(**d).validate()
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: invalid {cls.family} config ({err})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str, *, source: str = "config.json"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{source}: not valid JSON ({err})") from None
        return cls.from_dict(d, source=source)


def family_of(d: dict) -> str:
    """The family named in a config dict (version-1 DDPM configs carry none)."""
    return str(d.get("family", "ddpm")) if isinstance(d, dict) else "?"
