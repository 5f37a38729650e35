"""Publishing weights: ``timm-ghost convert`` (checkpoint -> Hub-ready folder) and ``timm-ghost push`` (upload).

A Hub-ready folder holds exactly what timm's ``hf-hub:`` / ``local-dir:`` loaders read: ``model.safetensors``,
``config.json`` (timm's format, ``timm.models.save_for_hf``'s with ``num_classes`` kept out of ``model_args`` so
that transformers loads it too: :func:`save_hub_folder`) and a ``README.md`` model card (timm's
``generate_readme``). ``convert`` builds it in a hidden sibling folder (:func:`timm_ghost._io.atomic_output_dir`),
loads it back through ``local-dir:``, compares logits with the source model and only then renames it into place, so
a failed run leaves nothing behind.

The library functions raise :class:`~timm_ghost.errors.ConversionError`, ``FileNotFoundError`` /
``FileExistsError`` or :class:`~timm_ghost.errors.PretrainedWeightsError`; the ``_cmd_*`` functions only call them
and print.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from . import _compat, _http, paddle
from ._http import sha256_file
from ._io import atomic_output_dir, check_output_dir
from .errors import ConversionError

__all__ = ['convert_checkpoint', 'validate_folder', 'push_folder', 'save_hub_folder', 'weights_cfg', 'WEIGHTS_KEYS',
           'HUB_FILES', 'CITATION']

HUB_FILES = ('model.safetensors', 'config.json', 'README.md')
PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.pkl', '.pickle', '.ckpt', '.tar')
CITATION = """@inproceedings{han2020ghostnet,
  title={GhostNet: More Features from Cheap Operations},
  author={Han, Kai and Wang, Yunhe and Tian, Qi and Guo, Jianyuan and Xu, Chunjing and Xu, Chang},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={1580--1589},
  year={2020}
}"""
_VERIFY_TOLERANCE = 1e-5  # max abs logit difference accepted between the source model and the folder loaded back
# The pretrained-cfg keys that describe one set of weights (where they come from, what made them, what they scored),
# as opposed to the architecture and the input it takes. A model built without loading weights carries its default
# tag's values (PaddleClas's ImageNet release for ghostnet_050); they must never travel with other weights.
WEIGHTS_KEYS = ('tag', 'url', 'hf_hub_id', 'hf_hub_filename', 'file', 'source', 'state_dict', 'origin_url',
                'description', 'notes', 'license')
# preprocessing a timm config.json beside a checkpoint records for those weights (convert keeps it)
_INPUT_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')


def weights_cfg(cfg: Dict[str, Any], description: str, notes: Sequence[str] = (), tag: Optional[str] = None,
                license: Optional[str] = None, origin_url: Optional[str] = None) -> Dict[str, Any]:
    """``cfg`` (a model's pretrained cfg) describing other weights: every :data:`WEIGHTS_KEYS` entry of the tag it
    was built from is dropped, and ``description`` (what trained these weights, on what), ``notes`` (their results),
    ``tag``, ``license`` and ``origin_url`` take their place (None: not recorded). Architecture and input keys stay."""
    out = {k: v for k, v in cfg.items() if k not in WEIGHTS_KEYS}
    out.update(tag=tag, description=description, notes=tuple(notes))
    if license:
        out['license'] = license
    if origin_url:
        out['origin_url'] = origin_url
    return out


def save_hub_folder(model: torch.nn.Module, folder: os.PathLike, model_config: Optional[Dict[str, Any]] = None,
                    data_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Write ``model.safetensors`` and ``config.json`` of ``model`` into ``folder``: timm's ``save_for_hf``
    (``model_config`` such as ``label_names``, ``data_config`` the preprocessing), with ``num_classes`` left out of
    the config's ``model_args``. Every folder this package writes goes through here (``convert``, the demo's).

    timm (1.0.31 on) records ``num_classes`` in ``model_args`` as well as at the config's root; transformers'
    TimmWrapper passes ``num_classes`` itself and ``**model_args`` on top, which fails with ``TypeError: ... got
    multiple values for keyword argument 'num_classes'``. timm reads the root ``num_classes`` (its ``hf-hub:`` /
    ``local-dir:`` loaders put it in the pretrained cfg, which sets the head), so both libraries load the result.

    Returns the config written (the parsed ``config.json``).
    """
    from ._compat import save_for_hf

    folder = Path(folder)
    save_for_hf(model, folder, model_config=model_config, data_config=data_config)
    path = folder / 'config.json'
    config = json.loads(path.read_text(encoding='utf-8'))
    model_args = config.get('model_args')
    if isinstance(model_args, dict) and 'num_classes' in model_args:
        del model_args['num_classes']
        if not model_args:
            del config['model_args']
        path.write_text(json.dumps(config, indent=2), encoding='utf-8')  # timm's own layout
    return config


def _load_source(src: Path, use_ema: bool) -> Dict[str, torch.Tensor]:
    """Tensors of a local checkpoint (safetensors, or a pickle read with weights_only=True), containers unwrapped."""
    from ._compat import load_state_dict_weights_only
    if not src.is_file():
        raise FileNotFoundError(f'src {src}: no such checkpoint file')
    if paddle.looks_like_pdparams(src):  # PaddleClas's GhostNet: read without running code, mapped to timm's keys
        return paddle.load_pdparams(src)
    try:
        return load_state_dict_weights_only(src, use_ema=use_ema)
    except Exception as e:
        raise ConversionError(
            f'src {src}: not a readable checkpoint (safetensors, or a torch pickle of tensors loadable with '
            f'weights_only=True): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}') from e


def _config_beside(src: Path, model_name: str) -> Dict[str, Any]:
    """The timm ``config.json`` in ``src``'s folder when it is one for ``model_name`` (else empty): its input size,
    preprocessing and label names (when as many as the classes) describe the weights beside it."""
    path = src.parent / 'config.json'
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConversionError(f'{path}: not valid JSON ({e}); fix or remove it (it would describe {src.name})') from e
    if not isinstance(config, dict) or config.get('architecture') != model_name:
        return {}
    return config


def _build_source_model(model_name: str, raw: Dict[str, Any]) -> torch.nn.Module:
    """Our ``model_name`` with the checkpoint's classes / input channels, its weights loaded strictly."""
    import timm

    from .hub import checkpoint_filter_fn

    def shape(key: str) -> Optional[torch.Size]:
        for k in (key, f'module.{key}'):
            if isinstance(raw.get(k), torch.Tensor):
                return raw[k].shape
        return None

    classifier, stem = shape('classifier.weight'), shape('conv_stem.weight')
    if stem is None:
        raise ConversionError(f'the checkpoint has no conv_stem.weight: not a GhostNet checkpoint (first keys: '
                              f'{", ".join(list(raw)[:5])})')
    model = timm.create_model(model_name, num_classes=classifier[0] if classifier is not None else 0,
                              in_chans=stem[1])
    state_dict = checkpoint_filter_fn(raw, model)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ConversionError(
            f'the checkpoint does not match {model_name}: {len(missing)} missing keys '
            f'({", ".join(missing[:6])}{", ..." if len(missing) > 6 else ""}), {len(unexpected)} unexpected '
            f'({", ".join(unexpected[:6])}{", ..." if len(unexpected) > 6 else ""})')
    return model.eval()


def _model_card(model: torch.nn.Module, model_name: str, repo_id: str, params: int, macs: int,
                top1: Optional[float], top5: Optional[float], dataset: Optional[str], license: str,
                extra_details: Optional[Dict[str, Any]] = None) -> str:
    from .ghostnet import PAPER_RESULTS

    size = model.pretrained_cfg['input_size']
    details: Dict[str, Any] = {
        'Model Type': 'Image classification / feature backbone',
        'Model Stats': {
            'Params (M)': f'{params / 1e6:.2f}',
            'MACs (M)': f'{macs / 1e6:.1f} (at {size[1]} x {size[2]})',
            'Image size': f'{size[1]} x {size[2]}',
            'Classes': model.num_classes,
        },
        'Papers': {'GhostNet: More Features from Cheap Operations': 'https://arxiv.org/abs/1911.11907'},
        'Original': 'https://github.com/huawei-noah/Efficient-AI-Backbones',
        'Weights': model.pretrained_cfg['description'],
    }
    details.update(extra_details or {})
    if dataset:
        details['Dataset'] = dataset
    if top1 is not None:
        details['Accuracy (measured for these weights)'] = {
            k: v for k, v in {'top-1': top1, 'top-5': top5, 'dataset': dataset}.items() if v is not None}
    paper = PAPER_RESULTS[model_name]
    comparison = (
        f'Reported in the paper for this architecture (ImageNet-1k, 224 px; not a measurement of these weights): '
        f'{paper.params_m} M params, {paper.macs_m:g} M MACs, top-1 {paper.top1}, top-5 {paper.top5}.\n')
    usage = (
        '```python\n'
        'import timm\n'
        'import timm_ghost  # registers ghostnet_050 / ghostnet_100 / ghostnet_130\n\n'
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()\n"
        'data_config = timm.data.resolve_model_data_config(model)\n'
        'transform = timm.data.create_transform(**data_config, is_training=False)\n'
        '```\n\n'
        'With transformers (`pip install "timm-ghost[hf]"`); `import timm_ghost` first, or timm\'s built-in GhostNet '
        'is built instead:\n\n'
        '```python\n'
        'import timm_ghost  # noqa: F401\n'
        'from transformers import pipeline\n\n'
        f"classifier = pipeline('image-classification', model='{repo_id}')\n"
        '```\n')
    card = dict(
        tags=['image-classification', 'timm', 'ghostnet'], license=license, details=details, usage=usage,
        comparison=comparison, citation=CITATION,
        description=f'GhostNet ({model_name}) weights in timm format, loadable with timm and the timm-ghost package.',
    )
    return _compat.generate_readme()(card, repo_id.split('/')[-1])


@torch.no_grad()
def convert_checkpoint(
        src: os.PathLike,
        out: os.PathLike,
        model_name: str,
        use_ema: bool = True,
        overwrite: bool = False,
        repo_id: Optional[str] = None,
        tag: Optional[str] = None,
        top1: Optional[float] = None,
        top5: Optional[float] = None,
        dataset: Optional[str] = None,
        license: str = 'apache-2.0',
        description: Optional[str] = None,
) -> Dict[str, Any]:
    """Turn a checkpoint into a Hub-ready folder ``out`` (``model.safetensors``, ``config.json``, ``README.md``).

    Args:
        src: local checkpoint in the authors' ghostnet_pytorch layout or timm's (safetensors, or a pickle of tensors,
            optionally wrapped in ``state_dict`` / ``model`` / ``state_dict_ema``, with ``module.`` prefixes and thop
            counters), or PaddleClas's ``.pdparams`` (see :mod:`timm_ghost.paddle`); classes and input channels are
            read from its classifier / stem shapes.
        out: folder to create; must not exist (or be empty) unless ``overwrite`` (the CLI's ``--overwrite``).
        model_name: ghostnet_050, ghostnet_100 or ghostnet_130.
        use_ema: take ``state_dict_ema`` when the checkpoint has one.
        repo_id: the Hub repository the card's usage snippet names (default ``<user>/<out folder name>``).
        tag, top1, top5, dataset, license, description: what config.json and the model card say about these weights
            (what trained them, on what, with which result); nothing of the variant's default tag is kept, and what
            is not given is said to be unrecorded. Only a PaddleClas release file itself gets that release's
            provenance. A timm ``config.json`` beside ``src`` (as ``timm-ghost demo`` writes) gives the input size,
            preprocessing and label names.
    Returns:
        Summary: ``params``, ``macs``, ``num_classes``, ``max_abs_diff`` (logits of the folder loaded back vs the
        source model, on a fixed random batch of 2 x in_chans x H x W), and ``files`` (name -> size, sha256).
    Raises:
        ConversionError: ``model_name`` unknown, ``src`` unreadable or not a GhostNet checkpoint of that width, or the
            written folder not reproducing the source model's logits.
        FileNotFoundError / FileExistsError: ``src`` missing; ``out`` not empty without ``overwrite``.
        PretrainedWeightsError: tensors of ``src`` whose shapes do not fit ``model_name``.
        In every case ``out`` is left as it was.
    """
    import timm

    from .ghostnet import WIDTHS
    from .models_info import count_macs, count_params

    if model_name not in WIDTHS:
        raise ConversionError(f'model_name must be one of {", ".join(WIDTHS)}, got {model_name!r}')
    src = Path(src)
    out = check_output_dir(out, overwrite, flag='--overwrite', name='out')  # before the work, not after it
    repo_id = repo_id or f'<user>/{out.resolve().name}'

    model = _build_source_model(model_name, _load_source(src, use_ema))
    beside = _config_beside(src, model_name)
    notes = []
    if top1 is not None:
        measured = ', '.join(f'{k} {v}' for k, v in (('top-1', top1), ('top-5', top5)) if v is not None)
        notes.append(f'{measured}{" on " + dataset if dataset else ""} (given to timm-ghost convert)')
    cfg = weights_cfg(
        {**model.pretrained_cfg, **{k: beside['pretrained_cfg'][k] for k in _INPUT_KEYS
                                    if k in beside.get('pretrained_cfg', {})}},
        description=description or (f'{src.name}, converted with timm-ghost convert'
                                    f'{"; trained on " + dataset if dataset else ""}; how these weights were trained '
                                    f'is not recorded'),
        notes=notes, tag=tag, license=license)
    card_details = None
    if paddle.looks_like_pdparams(src):  # PaddleClas's transform, origin and, for a released file, its accuracy
        cfg, card_details = paddle.paddle_export_cfg(model_name, src, cfg, tag)
    model.pretrained_cfg = model.default_cfg = cfg
    labels = {k: beside[k] for k in ('label_names', 'label_descriptions')
              if isinstance(beside.get(k), (list, dict)) and len(beside[k]) == model.num_classes}
    in_chans, height, width = model.in_chans, *cfg['input_size'][1:]
    x = torch.randn(2, in_chans, height, width, generator=torch.Generator().manual_seed(0))
    reference = model(x)
    params, macs = count_params(model), count_macs(model, img_size=height)

    with atomic_output_dir(out, overwrite, flag='--overwrite', name='out') as tmp:
        save_hub_folder(model, tmp, model_config=labels or None)
        (tmp / 'README.md').write_text(
            _model_card(model, model_name, repo_id, params, macs, top1, top5, dataset, license, card_details),
            encoding='utf-8')
        loaded = timm.create_model(f'local-dir:{tmp}', pretrained=True).eval()
        diff = (loaded(x) - reference).abs().max().item()
        if not diff <= _VERIFY_TOLERANCE:
            raise ConversionError(f'verification failed: logits of the written folder differ from the source model '
                                  f'by {diff:.3g} (max abs, tolerance {_VERIFY_TOLERANCE})')
        files = {name: dict(size=(tmp / name).stat().st_size, sha256=sha256_file(tmp / name)) for name in HUB_FILES}
    return dict(out=str(out), model=model_name, num_classes=model.num_classes, in_chans=in_chans, params=params,
                macs=macs, max_abs_diff=diff, files=files)


def validate_folder(folder: os.PathLike) -> Dict[str, Any]:
    """Check that ``folder`` is Hub-ready: the three files, no pickles, a card with front matter, a config.json
    transformers' TimmWrapper can build from (no ``num_classes`` in its ``model_args``, see :func:`save_hub_folder`)
    and a model that ``timm.create_model('local-dir:...', pretrained=True)`` builds and loads strictly.

    Returns a summary: ``architecture``, ``num_classes``, ``params``, ``files`` (name -> size, sha256), ``skipped``
    (other files in the folder, never uploaded). Raises ``FileNotFoundError`` for a missing folder and
    ``ConversionError`` naming the file and what is wrong with it otherwise.
    """
    import timm
    import yaml

    from .ghostnet import WIDTHS
    from .models_info import count_params

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'folder {folder}: no such folder')
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ConversionError(
            f'{folder} holds pickle files ({", ".join(pickles)}); only safetensors weights are published')
    missing = [n for n in HUB_FILES if n not in names]
    if missing:
        raise ConversionError(f'{folder} lacks {", ".join(missing)}; make the folder with `timm-ghost convert`')
    try:
        config = json.loads((folder / 'config.json').read_text(encoding='utf-8'))
    except ValueError as e:
        raise ConversionError(f'{folder}/config.json is not valid JSON: {e}') from e
    arch = config.get('architecture') if isinstance(config, dict) else None
    if arch not in WIDTHS:
        raise ConversionError(
            f'{folder}/config.json: architecture must be one of {", ".join(WIDTHS)}, got {arch!r}')
    if isinstance(config.get('model_args'), dict) and 'num_classes' in config['model_args']:
        raise ConversionError(
            f"{folder}/config.json: model_args holds num_classes, which transformers' TimmWrapper passes itself "
            f"(TypeError: got multiple values for keyword argument 'num_classes'); delete it from model_args (the "
            f"root num_classes stays) or write the folder again with `timm-ghost convert`")
    card = (folder / 'README.md').read_text(encoding='utf-8')
    front = card.split('---\n')
    meta = None
    if card.startswith('---\n') and len(front) >= 3:
        try:
            meta = yaml.safe_load(front[1])
        except yaml.YAMLError:
            meta = None
    if not isinstance(meta, dict) or meta.get('library_name') != 'timm' or not meta.get('license'):
        raise ConversionError(f'{folder}/README.md needs YAML front matter with library_name: timm and a license')
    try:
        model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    except Exception as e:
        raise ConversionError(f'{folder} does not load with timm: {type(e).__name__}: {e}') from e
    files = {n: dict(size=(folder / n).stat().st_size, sha256=sha256_file(folder / n)) for n in HUB_FILES}
    return dict(architecture=arch, num_classes=model.num_classes, params=count_params(model), files=files,
                skipped=[n for n in names if n not in HUB_FILES])


def push_folder(folder: os.PathLike, repo_id: str, revision: Optional[str] = None, private: bool = False,
                commit_message: Optional[str] = None, dry_run: bool = False) -> Dict[str, Any]:
    """Validate ``folder`` and upload its three files to Hub repo ``repo_id`` (created if missing) in one commit.

    Uses huggingface_hub's ``HfApi`` (token from ``HF_TOKEN`` or ``hf auth login``; endpoint ``HF_ENDPOINT``). A new
    repository is created private with ``private``, else with its owner's default visibility; an existing one keeps
    its visibility. ``revision`` names a branch, created from main if missing.
    Returns the validation summary plus ``commit_url`` / ``commit_oid`` (absent on ``dry_run``).
    Raises ``ConversionError`` for a bad ``repo_id`` or folder (see :func:`validate_folder`), ``PermissionError``
    without a token (before any request) or when the Hub refuses it (401 / 403), ``OSError`` for an unreachable Hub
    or any other failed request.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import validate_repo_id

    from . import __version__

    try:
        validate_repo_id(repo_id)
    except ValueError as e:
        raise ConversionError(f'repo_id {repo_id!r} is not a Hub repository id (org/name): {e}') from e
    if '/' not in repo_id:
        raise ConversionError(f'repo_id {repo_id!r}: give the owner too (org/name)')
    summary = validate_folder(folder)
    if dry_run:
        return summary
    if not _has_token():  # said before any request: without one the Hub refuses every upload
        raise PermissionError(f'push to {repo_id}: no Hugging Face token; set HF_TOKEN or run `hf auth login` with a '
                              f'write token')
    api = HfApi(library_name='timm-ghost', library_version=__version__)
    try:
        api.create_repo(repo_id, private=private or None, exist_ok=True)  # None: the owner's default visibility
        if revision not in (None, 'main'):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), revision=revision, allow_patterns=list(HUB_FILES),
            commit_message=commit_message or f'Add {summary["architecture"]} weights (timm-ghost)')
    except HfHubHTTPError as e:  # an OSError: the server's answer, with what to do about a refused token
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise PermissionError(f'upload to {repo_id} failed: {str(e).splitlines()[0]}; set HF_TOKEN or run '
                                  f'`hf auth login` with a write token') from e
        raise OSError(f'upload to {repo_id} failed: {str(e).splitlines()[0]}') from e
    except Exception as e:
        cause = _network_cause(e)
        if cause is None:
            raise
        raise OSError(f'upload to {repo_id} failed: could not reach the Hub at {api.endpoint} ({cause}); nothing was '
                      f'uploaded. Check the connection and HF_ENDPOINT') from e
    return dict(summary, commit_url=info.commit_url, commit_oid=info.oid)


def _has_token() -> bool:
    from huggingface_hub import get_token
    try:
        return bool(get_token())
    except Exception:  # an unreadable token file or a failing token exchange: no usable token
        return False


def _network_cause(e: BaseException) -> Optional[str]:
    """The failed connection behind ``e`` in words (the innermost socket error, or a timeout), or None when ``e`` is
    no network failure. httpx wraps socket errors in its own ``ConnectError`` / ``TimeoutException``, not OSErrors."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    sockets = [c for c in chain if isinstance(c, OSError)]
    if sockets:
        inner = sockets[-1]
        return f'{type(inner).__name__}: {inner.strerror or inner}'
    if any(_http.is_timeout(c) for c in chain):
        return 'timed out'
    return None


def _print_files(files: Dict[str, Dict[str, Any]]) -> None:
    for name, f in files.items():
        print(f'  {name:<18} {f["size"]:>12,d} B  sha256 {f["sha256"]}')


def _cmd_convert(args: Any) -> int:
    r = convert_checkpoint(args.src, args.out, args.model, use_ema=not args.no_ema, overwrite=args.overwrite,
                           repo_id=args.repo_id, tag=args.tag, top1=args.top1, top5=args.top5, dataset=args.dataset,
                           license=args.license, description=args.description)
    print(f'{r["out"]}: {r["model"]}, {r["num_classes"]} classes, {r["params"] / 1e6:.2f} M params, '
          f'{r["macs"] / 1e6:.1f} M MACs')
    _print_files(r['files'])
    print(f'verified: loaded back with local-dir:, max abs logit difference {r["max_abs_diff"]:.3g}')
    return 0


def _cmd_push(args: Any) -> int:
    r = push_folder(args.folder, args.repo_id, revision=args.revision, private=args.private,
                    commit_message=args.commit_message, dry_run=args.dry_run)
    print(f'{args.folder}: {r["architecture"]}, {r["num_classes"]} classes, {r["params"] / 1e6:.2f} M params; '
          f'loads with timm')
    _print_files(r['files'])
    if r['skipped']:
        print(f'  not uploaded: {", ".join(r["skipped"])}')
    if args.dry_run:
        print(f'dry run: would upload {len(HUB_FILES)} files to {args.repo_id}'
              f'{"@" + args.revision if args.revision else ""}; nothing sent')
    else:
        print(f'uploaded: {r["commit_url"]}')
        print(f"load with: timm.create_model('hf-hub:{args.repo_id}', pretrained=True)")
    return 0


def register_cli(sub: Any) -> None:
    """Add ``timm-ghost convert`` and ``timm-ghost push``."""
    from .ghostnet import WIDTHS

    p = sub.add_parser(
        'convert', help='checkpoint -> Hub-ready folder (model.safetensors, config.json, README.md), verified',
        description='Convert a GhostNet checkpoint (the authors\' ghostnet_pytorch layout or timm\'s; safetensors or '
                    'a weights-only torch pickle; or PaddleClas\'s .pdparams) into a folder timm loads with '
                    'hf-hub: / local-dir:. The folder is '
                    'loaded back and its logits compared before it is moved into place.')
    p.add_argument('src', help='checkpoint file (.pth, .pth.tar, .bin, .safetensors, PaddleClas .pdparams)')
    p.add_argument('out', help='folder to create')
    p.add_argument('--model', required=True, choices=list(WIDTHS), help='architecture of the checkpoint')
    p.add_argument('--no-ema', action='store_true', help='take state_dict rather than state_dict_ema when both exist')
    p.add_argument('--overwrite', action='store_true', help='replace OUT if it exists')
    p.add_argument('--repo-id', help='Hub repository named in the card\'s usage snippet')
    p.add_argument('--tag', help='pretrained tag recorded in config.json (e.g. in1k)')
    p.add_argument('--top1', type=float, help='measured top-1 accuracy of these weights, for the card')
    p.add_argument('--top5', type=float, help='measured top-5 accuracy of these weights, for the card')
    p.add_argument('--dataset', help='dataset the weights were trained / evaluated on (e.g. imagenet-1k)')
    p.add_argument('--license', default='apache-2.0', help='licence of the weights (default apache-2.0)')
    p.add_argument('--description',
                   help='what trained these weights and how, for config.json and the card (default: "not recorded")')
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        'push', help='validate a converted folder and upload it to the Hugging Face Hub',
        description='Upload model.safetensors, config.json and README.md of FOLDER to REPO_ID in one commit '
                    '(token from HF_TOKEN or `hf auth login`, endpoint from HF_ENDPOINT).')
    p.add_argument('folder', help='folder made by `timm-ghost convert`')
    p.add_argument('repo_id', help='Hub repository (org/name); created if missing')
    p.add_argument('--revision', help='branch to commit to (created if missing; default main)')
    p.add_argument('--private', action='store_true',
                   help="create the repository private (a new one; otherwise the owner's default visibility)")
    p.add_argument('--commit-message', help='commit message')
    p.add_argument('--dry-run', action='store_true', help='validate the folder and show what would be uploaded')
    p.set_defaults(func=_cmd_push)
