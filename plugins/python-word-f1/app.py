"""babelrl reward plugin in Python: token-overlap F1 against the reference (see word_f1.py).

Build: ./build.sh  (componentize-py -d ../../sdk/wit -w reward componentize app -o word_f1.wasm)
"""

from typing import List, Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import host, types

import word_f1

_config = None


class WitWorld(wit_world.WitWorld):
    def configure(self, config_json: str) -> None:
        global _config
        try:
            _config = word_f1.parse_config(config_json)
        except ValueError as e:
            raise Err(f"word-f1: invalid config: {e}")
        host.log(types.LogLevel.DEBUG, f"word-f1 configured: {_config}")

    def score(self, group: List[types.Sample]) -> List[Optional[float]]:
        if _config is None:
            raise Err("word-f1: score called before configure")
        completions = [s.completion for s in group]
        references = [s.reference for s in group]
        return word_f1.score_group(_config, completions, references)
