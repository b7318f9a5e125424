"""The configured values that are secrets, handed to the process's redactor.

Options declared ``secret`` (passwords, transport URLs) and the passwords inside any URL an
option holds (an ``auth_url`` with credentials, say) are protected: see
:mod:`cdm_sync.redaction`. Called after the configuration is loaded, and again by the adapters
that register options late (keystoneauth registers its plugin's options when it loads it).
"""

from __future__ import annotations

from typing import Any

from oslo_config import cfg

from cdm_sync.redaction import REDACTOR, Redactor


def protect_secrets(conf: cfg.ConfigOpts, redactor: Redactor = REDACTOR) -> None:
    """Register every secret value of ``conf`` (every group, every option registered now)."""
    # oslo.config's own log_opt_values walks the options the same way.
    for info, group in conf._all_opt_infos():
        opt = info["opt"]
        try:
            value: Any = conf[group.name][opt.dest] if group is not None else conf[opt.dest]
        except Exception:  # an unparsable value: the configuration's loading reports it
            continue
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if opt.secret:
                redactor.protect(str(item))
            elif isinstance(item, str) and "://" in item:
                redactor.protect_url_passwords(item)
