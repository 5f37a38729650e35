"""Reading PaddleClas's ``.pdparams`` files without running code.

A ``.pdparams`` file is a pickle (``paddle.save``: a dict of numpy arrays, protocol 2 to 4). It is read with
:class:`RestrictedUnpickler`, which admits numpy's array reconstruction and nothing else: a pickle that names any
other global (one that would run code) is refused before anything runs.
"""
from __future__ import annotations

import io
import os
import pickle
from typing import Any, Dict, Optional, Tuple, Union

from ..errors import PretrainedWeightsError

__all__ = ['PADDLE_SUFFIX', 'RestrictedUnpickler', 'is_pdparams', 'looks_like_pdparams', 'read_pdparams']

PADDLE_SUFFIX = '.pdparams'


def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    """The only globals a ``.pdparams`` pickle may name: numpy's array / dtype reconstruction, under the module paths
    numpy 1.x and 2.x write them with, resolved to the installed numpy's functions (taken from numpy's own
    ``__reduce__`` results, not imported by private path)."""
    import codecs

    import numpy as np

    reconstruct = np.empty(0).__reduce__()[0]  # numpy's ``multiarray._reconstruct``
    frombuffer = np.ones(1).__reduce_ex__(5)[0]  # numpy's ``numeric._frombuffer`` (pickle protocol 5)
    allowed: Dict[Tuple[str, str], Any] = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype,
                                           ('_codecs', 'encode'): codecs.encode}  # bytes in protocol-2 pickles
    for core in ('numpy.core', 'numpy._core'):
        allowed[(f'{core}.multiarray', '_reconstruct')] = reconstruct
        allowed[(f'{core}.numeric', '_frombuffer')] = frombuffer
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, dicts, lists, tuples, strings and numbers, and nothing else.

    ``find_class`` is the only way a pickle reaches code (``GLOBAL`` / ``STACK_GLOBAL`` / ``INST`` / ``OBJ`` /
    ``EXT*`` all go through it); it answers only numpy's array reconstruction and raises for every other name, so a
    pickle carrying ``os.system`` or ``builtins.eval`` fails at that opcode, before the call that would run it.
    Persistent ids (torch's storage references) are refused too.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source
        self._allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise PretrainedWeightsError(
                f'{self.source}: refused to unpickle: the pickle names the global {module}.{name}, and a '
                f'.pdparams file may hold numpy arrays only (nothing in it was run)')
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise PretrainedWeightsError(
            f'{self.source}: refused to unpickle: the pickle uses persistent ids (a torch checkpoint?); a .pdparams '
            f'file is a plain pickle of numpy arrays')


def is_pdparams(path: Union[str, os.PathLike]) -> bool:
    """Whether a path or URL names a Paddle parameter file (``.pdparams``)."""
    return str(path).split('?')[0].lower().endswith(PADDLE_SUFFIX)


_TORCH_LEGACY_MAGIC = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'  # torch.save's pre-zip format


def looks_like_pdparams(path: Union[str, os.PathLike]) -> bool:
    """Whether a local file is to be read as a Paddle pickle: named ``.pdparams``, or a plain pickle (protocol 2 to 5)
    that is neither torch's zip nor its legacy format nor safetensors (whose 8-byte header length is followed by
    ``{``); whether it holds PaddleClas's GhostNet is then told by its keys."""
    if is_pdparams(path):
        return True
    if str(path).lower().endswith('.safetensors'):
        return False
    try:
        with open(path, 'rb') as f:
            head = f.read(len(_TORCH_LEGACY_MAGIC))
    except OSError:
        return False
    return (head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05') and head[8:9] != b'{'
            and head != _TORCH_LEGACY_MAGIC)


def read_pdparams(path: Union[str, os.PathLike], source: Optional[str] = None) -> Dict[str, Any]:
    """The arrays of a ``.pdparams`` file, read with :class:`RestrictedUnpickler`.

    Args:
        path: the file (``paddle.save`` of a state dict, or a legacy ``fluid.save_dygraph`` file).
        source: how to name the file in errors (default: ``path``; the URL for downloads).
    Returns:
        ``{key: numpy.ndarray}`` of every numeric array; other entries (Paddle's ``StructuredToParameterName@@``
        name table) are dropped.
    Raises:
        PretrainedWeightsError: naming the file, when it is missing, not a plain pickle (a zip / torch file),
            truncated, names any global other than numpy's array reconstruction, or holds no numeric arrays.
    """
    import numpy as np

    source = source or str(path)
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
            if not head.startswith(b'\x80'):
                kind = 'a zip archive (a torch checkpoint?)' if head == b'PK' else f'starting with {head!r}'
                raise PretrainedWeightsError(f'{source}: not a .pdparams pickle ({kind})')
            f.seek(0)
            obj = RestrictedUnpickler(f, source).load()
    except PretrainedWeightsError:
        raise
    except FileNotFoundError as e:
        raise PretrainedWeightsError(f'{source}: no such file') from e
    except Exception as e:  # truncated or corrupt pickle: one line naming the file, the cause chained
        raise PretrainedWeightsError(
            f'{source}: not a readable .pdparams pickle: {type(e).__name__}: {e}') from e
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f'{source}: expected a dict of arrays, got {type(obj).__name__}')
    arrays = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
    odd = [k for k, v in arrays.items() if v.dtype.kind not in 'fiub']
    if odd:
        raise PretrainedWeightsError(f'{source}: non-numeric arrays ({", ".join(odd[:5])})')
    if not arrays:
        raise PretrainedWeightsError(f'{source}: holds no arrays (keys: {", ".join(map(str, list(obj)[:5]))})')
    return arrays
