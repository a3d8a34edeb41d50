"""nbutils: the tested logic behind the MusicGen LoRA Colab notebooks.

Stages, one module each: ``tokenize`` (ZIP batches -> EnCodec token shards), ``train``
(LoRA on MusicGen), ``generate`` and ``evaluate``. ``models`` loads MusicGen (hub id, local
directory or the embedded ``tiny``), ``colab`` knows about Drive and secrets, ``cli`` exposes
every stage as ``python -m nbutils <command>``.

Importing the package is cheap: torch and transformers load only when a stage needs them.
"""

__version__ = "0.1.0"

from nbutils.errors import UserError

__all__ = ["UserError", "__version__"]
