"""The YAML reader every params file goes through, bounded against what YAML allows but a
params file never needs: at most ``MAX_BYTES`` of UTF-8 text, no key twice in one mapping,
at most ``MAX_VALUES`` values once aliases are expanded.  Any problem is a ``ParamsError``
naming the file (and the line, for a YAML error)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from . import ParamsError, short

MAX_BYTES = 1 << 20  # a params file is text of a few kB; more is a mistake (or an attack)
MAX_VALUES = 200_000  # values after expanding YAML aliases (a "billion laughs" file expands to 10^9)


def read_yaml(path: Path) -> Any:
    """The YAML document of ``path``, bounded: at most MAX_BYTES of UTF-8 text, no key twice
    in one mapping, at most MAX_VALUES values once aliases are expanded.  ParamsError otherwise."""
    import yaml

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file (pass --params FILE)") from None
    except IsADirectoryError:
        raise ParamsError(f"{path}: is a folder, not a params file (pass --params FILE)") from None
    except OSError as e:
        raise ParamsError(f"{path}: cannot be read ({e.strerror}); pass a readable --params FILE") from None
    if len(data) > MAX_BYTES:
        raise ParamsError(f"{path}: larger than {MAX_BYTES // 1024} kB; a params file is a few kB of YAML")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParamsError(
            f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); save it as UTF-8"
        ) from None
    loader = _loader_class()(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_VALUES:
            raise ParamsError(
                f"{path}: expands to more than {MAX_VALUES} values (YAML aliases: *name); write the values out"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ParamsError(f"{path}:{where}: not valid YAML ({str(problem)[:200]})") from None
    except RecursionError:
        raise ParamsError(f"{path}: nested too deeply to be a params file") from None
    finally:
        loader.dispose()


@functools.lru_cache(maxsize=1)
def _loader_class():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last)."""

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # merge keys (<<) may be overridden; complex keys: the base class decides
                    key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None,
                            None,
                            f"duplicate key {short(key)} (first at line {seen[key]}); give each key once",
                            key_node.start_mark,
                        )
                    seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return Loader


def _expanded_size(node, memo: dict, active: set) -> int:
    """How many values ``node`` holds once every alias is expanded (memoized: linear time)."""
    import yaml

    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise yaml.composer.ComposerError(None, None, "an alias refers to the node that contains it", node.start_mark)
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        n = 1 + sum(_expanded_size(c, memo, active) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n = 1 + sum(_expanded_size(k, memo, active) + _expanded_size(v, memo, active) for k, v in node.value)
    else:
        n = 1
    active.discard(key)
    memo[key] = n
    return n
