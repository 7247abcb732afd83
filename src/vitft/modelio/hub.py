"""``hub.push=true``: upload a run's ``model/`` folder (weights, processor, card) to the HF hub."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vitft.errors import VitftError

log = logging.getLogger(__name__)


def push_model_dir(model_dir: str | Path, hub_cfg: Any) -> str | None:
    """Push ``model_dir`` to ``hub.repo_id`` when ``hub.push``; returns the commit URL."""
    if not hub_cfg or not hub_cfg.get("push"):
        return None
    repo_id = hub_cfg.get("repo_id")
    if not repo_id:
        raise VitftError("hub.push=true needs hub.repo_id=<user or org>/<name>")
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise VitftError(f"{model_dir} is not a model dir (no config.json); nothing to push")
    from huggingface_hub import CommitOperationAdd, HfApi

    # One commit of every file of the model dir (weights, processor, card, vitft.json).
    operations = [
        CommitOperationAdd(path_in_repo=f.relative_to(model_dir).as_posix(), path_or_fileobj=f)
        for f in sorted(model_dir.rglob("*"))
        if f.is_file()
    ]
    api = HfApi(token=hub_cfg.get("token"))  # None: HF_TOKEN or `hf auth login`
    try:
        api.create_repo(repo_id, private=bool(hub_cfg.get("private", True)), exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations=operations,
            commit_message=hub_cfg.get("commit_message") or "vitft: upload model",
            revision=hub_cfg.get("revision"),
        )
    except Exception as err:  # network, auth, or permission: the run itself is done and kept
        raise VitftError(
            f"hub.push: uploading {model_dir} to {repo_id} failed ({type(err).__name__}: {err}); "
            "the model dir is complete, push it later with "
            f"`hf upload {repo_id} {model_dir}` or check HF_TOKEN"
        ) from err
    url = getattr(commit, "commit_url", str(commit))
    log.info("hub.push: %s -> %s", model_dir, url)
    return url
