"""Upstream algorithms, each turning source tasks into a prompt initialisation."""

from engine.algorithms.fomaml import FoMAML
from engine.algorithms.maml import MAML
from engine.algorithms.mtl import MTL
from engine.algorithms.reptile import Reptile

ALGORITHMS = {cls.name: cls for cls in (MTL, MAML, FoMAML, Reptile)}
