"""`logship config`: the effective config as YAML, each key with a comment saying where its value
comes from (default, file PATH, env VAR). Secrets are redacted; the output loads as a config file."""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from shipper.config import Config, to_dict

COMMENT_COLUMN = 40
# Where an S3 store's credentials come from when store.access_key / store.secret_key are empty: botocore's
# own chain, whose first step is these variables (the rest, profiles and instance roles, is not looked up:
# that would need the network).
AWS_ENV = {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY"}


def render(cfg: Config, env: Mapping[str, str]) -> str:
    lines = ["# logship config: the effective config. After each key, where its value comes from:",
             "# default, file PATH or env VAR. Secrets are redacted, never printed; this output is YAML again."]
    for section, body in to_dict(cfg).items():
        lines.append(f"{section}:")
        for key, value in body.items():
            text = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, width=1 << 16,
                                  allow_unicode=True).rstrip("\n").split("\n")
            first = f"  {text[0]}"
            lines.append(f"{first.ljust(COMMENT_COLUMN - 1)} # {origin(cfg, section, key, env)}")
            lines.extend(f"  {rest}" for rest in text[1:])
    return "\n".join(lines) + "\n"


def origin(cfg: Config, section: str, key: str, env: Mapping[str, str]) -> str:
    where = cfg.origins.get(f"{section}.{key}", "default")
    if section == "store" and key in AWS_ENV and not getattr(cfg.store, key) and cfg.store.url.startswith("s3://"):
        var = AWS_ENV[key]
        if env.get(var):
            return f"{where} (empty): the S3 client takes env {var}"
        chain = f"profile {env['AWS_PROFILE']}" if env.get("AWS_PROFILE") else "~/.aws/credentials or an instance role"
        return f"{where} (empty): {var} is not set; the S3 client looks in {chain}"
    return where
