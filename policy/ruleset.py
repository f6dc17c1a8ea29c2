"""Every rules file of a folder, loaded and checked together.

The gateway swaps rules only as a whole: a policy naming a service that the new catalog dropped must be refused
along with the catalog edit, never half-applied. `check()` is what `gateway rules check` prints: each file on
its own, so one broken file does not hide the errors of the others.

Files: endpoints.yaml (core.catalog, required), policy.yaml, identity.yaml, recognizers.yaml (dlp.rules, when the
DLP package provides it), injection.yaml (dlp.injection, the same); a missing optional file means its defaults.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.catalog import Catalog
from core.rulesfile import RulesError
from policy import identity, language
from policy.identity import IdentityConfig
from policy.language import Policy

ENDPOINTS, POLICY, IDENTITY, RECOGNIZERS = "endpoints.yaml", "policy.yaml", "identity.yaml", "recognizers.yaml"
INJECTION = "injection.yaml"
FILES = (ENDPOINTS, POLICY, IDENTITY, RECOGNIZERS, INJECTION)


@dataclass
class RuleSet:
    folder: Path
    catalog: Catalog
    policy: Policy
    identity: IdentityConfig
    recognizers: Any = None  # dlp.rules.DlpRules, when the DLP package is there and the folder has the file
    digests: dict[str, str] = field(default_factory=dict)  # file name -> sha256 prefix of what was loaded


def load_policy(folder: Path, catalog: Catalog) -> Policy:
    path = folder / POLICY
    return language.load(path, catalog) if path.exists() else Policy()


def load_identity(folder: Path) -> IdentityConfig:
    path = folder / IDENTITY
    return identity.load(path) if path.exists() else IdentityConfig()


def recognizers_loader(module_name: str = "dlp.rules"):
    """dlp.rules.load_rules (or another DLP module's), if the DLP package is installed (the policy does not need
    it)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, "load_rules", None)


def load(folder: str | Path, recognizers: bool = True) -> RuleSet:
    """All files, or the first RulesError; `recognizers` False leaves recognizers.yaml out (the costly part: a
    process that scans nothing need not compile it)."""
    folder = Path(folder)
    loaded_digests = digests(folder)  # before reading: a file changed while loading is reloaded again
    catalog = Catalog.load(folder / ENDPOINTS)
    rules = RuleSet(folder, catalog, load_policy(folder, catalog), load_identity(folder),
                    digests=loaded_digests)
    loader = recognizers_loader()
    if recognizers and loader is not None and (folder / RECOGNIZERS).exists():
        rules.recognizers = loader(folder / RECOGNIZERS)
    threats = recognizers_loader("dlp.injection")
    if recognizers and threats is not None and (folder / INJECTION).exists():
        threats(folder / INJECTION)  # checked with the rest: the DLP workers read it (addons/inspect.py)
    return rules


def check(folder: str | Path) -> list[RulesError]:
    """Every file checked on its own; the policy against the catalog when the catalog loads."""
    folder = Path(folder)
    errors: list[RulesError] = []
    catalog = None
    try:
        catalog = Catalog.load(folder / ENDPOINTS)
    except RulesError as e:
        errors.append(e)
    if catalog is not None:
        try:
            load_policy(folder, catalog)
        except RulesError as e:
            errors.append(e)
    try:
        load_identity(folder)
    except RulesError as e:
        errors.append(e)
    for name, load_file in ((RECOGNIZERS, recognizers_loader()), (INJECTION, recognizers_loader("dlp.injection"))):
        if load_file is not None and (folder / name).exists():
            try:
                load_file(folder / name)
            except RulesError as e:
                errors.append(e)
    return errors


def digests(folder: Path) -> dict[str, str]:
    """What each present rules file holds (a sha256 prefix): tells an edit from a touch, and which is active. The
    folder's other YAML files count too: injection.yaml's `include:` names files beside it (an edit of one is an
    edit of the rules)."""
    out = {}
    others = sorted(f.name for f in folder.glob("*.yaml") if f.name not in FILES) if folder.is_dir() else []
    for name in (*FILES, *others):
        try:
            out[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()[:12]
        except OSError:
            continue
    return out
