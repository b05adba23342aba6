"""Service settings: environment variables for endpoints and secrets, plus the YAML file.

Each service has one settings class deriving from ``ServiceSettings``. ``load()`` reads the
environment and the YAML file (``SWITCHBOARD_CONFIG_FILE``, default ``config/switchboard.yaml``)
and raises ``ConfigError`` naming every wrong key, so a service fails at start, not later.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Hashable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from switchboard.shared.config import SecretRef, SharedConfig
from switchboard.shared.logs import mask_in_logs

DEFAULT_CONFIG_FILE = Path("config/switchboard.yaml")
MISPLACED_PREFIXES = ("SWITCHBOARD_KAFKA__", "SWITCHBOARD_SMTP__")
ConfigModel = TypeVar("ConfigModel", bound=BaseModel)
CONFIG_FILE_ENV = "SWITCHBOARD_CONFIG_FILE"


class ConfigError(Exception):
    """Configuration that cannot work; the message names the key and what is wrong."""


def _masked(value: SecretStr) -> SecretStr:
    mask_in_logs(value.get_secret_value())
    return value


# A secret from the environment: hidden in reprs and dumps, and masked in the logs once read.
Secret = Annotated[SecretStr, AfterValidator(_masked)]


class KafkaSettings(BaseSettings):
    """Where the Kafka cluster is and how to reach it (``KAFKA_*``).

    With no ``KAFKA_BOOTSTRAP_SERVERS``, ``switchboard run``/``demo`` start the embedded broker.
    """

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore", frozen=True)

    bootstrap_servers: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    max_message_bytes: int = Field(
        default=1_048_576,
        # route keeps a conversation's latest tweets (up to six of 25,000 characters: 0.9 MB
        # as JSON at worst) in one changelog record, which the cluster must take.
        ge=1_048_576,
        description="The largest message the cluster accepts (its message.max.bytes), at least "
        "1 MiB (Kafka's default); a larger output goes to switchboard.deadletter as too_large",
    )
    group_instance_id: str | None = Field(
        default=None,
        description="Static group membership (KIP-345): a unique, stable name per replica (the "
        "pod name). A replica restarted after a crash takes its partitions back at once instead "
        "of waiting for the broker to expire the dead member; unset: dynamic membership",
    )
    fetch_max_bytes: int = Field(
        default=8 * 1_048_576,
        ge=65_536,
        description="The most a consumer fetches and buffers at once, over all its partitions: "
        "under a backlog this, not the backlog, bounds its memory (a record larger than this is "
        "still fetched alone)",
    )
    fetch_idle_pause_ms: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Pause after a fetch that brought nothing, for brokers that answer at once "
        "instead of waiting fetch.max.wait.ms (the embedded one); up to five times longer once "
        "nothing came for ten fetches in a row; 0: none",
    )

    delivery_timeout_ms: int = Field(
        default=120_000,
        ge=1_000,
        description="How long ingest and classify wait for the broker to acknowledge an output "
        "before giving up on it (Kafka's delivery.timeout.ms; aiokafka's own default, 40 s, is "
        "shorter than a broker restart can take). Past it the service exits without committing, "
        "for its orchestrator to restart it; the input is read again. route and notify (faust) "
        "wait faust's producer_request_timeout",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_pairs(cls, servers: str | None) -> str | None:
        if servers is None or servers == "":  # unset: run and demo start the embedded broker
            return None
        for server in (s.strip() for s in servers.split(",")):
            host, _, port = server.rpartition(":")
            if server.endswith("]") or ":" not in server:  # a host alone: Kafka's port 9092
                host, port = server, "9092"
            unbracketed_ipv6 = ":" in host and not host.startswith("[")  # also a scheme://
            if not host or unbracketed_ipv6 or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port (a comma-separated list of "
                                 "them, such as kafka-0:9092,[fd00::1]:9092)")  # fmt: skip
        return servers

    @classmethod
    def load(cls) -> KafkaSettings:
        """From the ``KAFKA_*`` variables, or ConfigError naming each one that is wrong."""
        return from_environment(cls, "KAFKA_")

    def require_bootstrap(self) -> str:
        if not self.bootstrap_servers:
            raise ConfigError(
                "KAFKA_BOOTSTRAP_SERVERS is not set: point it at a Kafka cluster, or use "
                "`switchboard run`, which starts the embedded broker"
            )
        return self.bootstrap_servers

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        problem = _security_problem(self)
        if problem:
            raise ValueError(problem)
        return self


def _security_problem(kafka: KafkaSettings) -> str | None:
    """What makes the TLS and SASL settings unusable together, naming the variables."""
    protocol = kafka.security_protocol
    sasl_given = [name for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                  if getattr(kafka, name) is not None]  # fmt: skip
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
    if protocol.startswith("SASL") and not ((kafka.sasl_username or "").strip() and password):
        return f"KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD: {protocol} needs both, not empty"
    if sasl_given and not protocol.startswith("SASL"):
        names = ", ".join("KAFKA_" + name.upper() for name in sasl_given)
        return f"{names}: set, but KAFKA_SECURITY_PROTOCOL {protocol} does not use SASL"
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(kafka, name)
        if path is not None and protocol not in ("SSL", "SASL_SSL"):
            return f"KAFKA_{name.upper()}: set, but KAFKA_SECURITY_PROTOCOL {protocol} is not TLS"
        if path is not None and not path.is_file():
            return f"KAFKA_{name.upper()}: {path} is not a readable file"
    if kafka.ssl_keyfile is not None and kafka.ssl_certfile is None:
        return "KAFKA_SSL_KEYFILE: given without KAFKA_SSL_CERTFILE"
    return None


class _YamlFileSource(PydanticBaseSettingsSource):
    """Puts the YAML file's content under the ``config`` field."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {"config": read_yaml(self.path)}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last,
    so a second ``route:`` section would silently replace the first, rules and all."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: overridden by design
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice (the second here)", key_node.start_mark,
                )  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


EnvironmentSettings = TypeVar("EnvironmentSettings", bound=BaseSettings)


def from_environment(settings: type[EnvironmentSettings], prefix: str) -> EnvironmentSettings:
    """``settings`` read from their ``prefix`` variables, or ConfigError naming each wrong one."""
    try:
        return settings()
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, env_prefix=prefix)) from None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise ConfigError(
            f"{CONFIG_FILE_ENV}: configuration file {path} does not exist "
            f"(copy config/switchboard.yaml and edit it)"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:  # unreadable, or not UTF-8
        raise ConfigError(
            f"{CONFIG_FILE_ENV}: configuration file {path} cannot be read: {exc}"
        ) from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return content


class ServiceSettings(BaseSettings):
    """What every service reads; subclasses add their own fields (``SWITCHBOARD_*``) and type
    their own section of ``config`` (the CLI's ``PipelineSettings`` types all four)."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHBOARD_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    service: ClassVar[str] = "switchboard"
    default_http_port: ClassVar[int] = 8080

    config_file: Path = DEFAULT_CONFIG_FILE
    http_host: str = "127.0.0.1"
    http_port: int | None = Field(default=None, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    config: SharedConfig

    @property
    def port(self) -> int:
        return self.default_http_port if self.http_port is None else self.http_port

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_path(init_settings, env_settings)
        return (init_settings, env_settings, _YamlFileSource(settings_cls, path))

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read and validate everything, or raise ConfigError naming each wrong key."""
        misplaced = sorted(n for n in os.environ if n.upper().startswith(MISPLACED_PREFIXES))
        if misplaced:  # read by nothing: KafkaSettings and SmtpSettings read KAFKA_* and SMTP_*
            raise ConfigError(f"environment: {', '.join(misplaced)}: Kafka's and the mail "
                              "relay's variables are KAFKA_* and SMTP_* (KAFKA_BOOTSTRAP_SERVERS, "
                              "SMTP_HOST, ...)")  # fmt: skip
        if "kafka" not in overrides:
            overrides["kafka"] = KafkaSettings.load()
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raw = _raw_config(overrides)
            raise ConfigError(describe_errors(exc, env_prefix="SWITCHBOARD_", raw=raw)) from None
        except SettingsError as exc:  # a variable whose value pydantic could not parse
            model = cls.model_fields["config"].annotation
            suspects = [
                name
                for name in config_overrides()
                if _takes_json(model, name) and not _json(os.environ[name])
            ]
            named = f"{', '.join(suspects)}: " if suspects else ""
            raise ConfigError(
                f"environment: {named}{exc} (a SWITCHBOARD_CONFIG__ override of a list or a "
                "map takes JSON, e.g. '[\"critical\"]')"
            ) from None


class StreamSettings(ServiceSettings):
    """A service that is a faust app (route, notify): where its tables live on local disk."""

    state_dir: Path | None = Field(
        default=None,
        description="Where the replica keeps its tables' local stores (RocksDB), a cache of "
        "their changelogs: kept across restarts, a replica reads only what changed since "
        "(a volume per replica); unset: a temporary directory, restored from the changelog "
        "at every start",
    )


def _config_path(init: PydanticBaseSettingsSource, env: PydanticBaseSettingsSource) -> Path:
    if isinstance(init, InitSettingsSource) and init.init_kwargs.get("config_file"):
        return Path(init.init_kwargs["config_file"])
    value = env.get_field_value(ServiceSettings.model_fields["config_file"], "config_file")[0]
    return Path(value) if value else DEFAULT_CONFIG_FILE


def _raw_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """The YAML file as written, to name things (rules) in error messages; {} if unreadable."""
    try:
        return read_yaml(config_file_in_use(overrides.get("config_file")))
    except ConfigError:
        return {}


def file_digest(path: Path) -> str | None:
    """The file's SHA-256, None when it cannot be read: how a service sees its YAML file change."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def config_file_in_use(path: Path | str | None = None) -> Path:
    """``path``, else the file a service would read (``SWITCHBOARD_CONFIG_FILE`` or the default)."""
    return Path(path or os.environ.get(CONFIG_FILE_ENV) or DEFAULT_CONFIG_FILE)


def check_config_file(path: Path, model: type[BaseModel]) -> list[str]:
    """The errors a service whose config model is ``model`` would stop on at start, one line
    each, naming the key (and the routing rule); [] when it would start. The file is read with
    the environment's ``SWITCHBOARD_CONFIG__`` overrides over it, as a service reads it. Secrets
    are read when a service uses them, so a secret's variable or file is not looked for here."""
    read_yaml(path)  # a file missing or unreadable is not a list of errors: raised as it is
    try:
        load_config(path, model)
    except ConfigError as exc:
        lines = str(exc).splitlines()
        return lines[1:] if len(lines) > 1 else lines  # after "invalid configuration"
    return []


def load_config(path: Path, model: type[ConfigModel]) -> ConfigModel:
    """The file at ``path`` with the environment's ``SWITCHBOARD_CONFIG__`` overrides over it,
    validated as ``model`` as a service does at start; ConfigError naming each wrong key."""
    as_at_start = create_model("ConfigCheck", __base__=ServiceSettings, config=(model, ...))
    # the Kafka variables are judged when a service connects, not here
    return as_at_start.load(config_file=path, kafka=KafkaSettings.model_construct()).config


def _takes_json(model: Any, variable: str) -> bool:
    """Whether the key a ``SWITCHBOARD_CONFIG__`` variable overrides is a list, a map or a
    section, whose value pydantic-settings reads as JSON."""
    annotation = model
    for part in variable.lower().split("__")[1:]:
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        field = annotation.model_fields.get(part)
        if field is None:
            return False
        annotation = _without_none(field.annotation)
    origin = get_origin(annotation) or annotation
    composite = isinstance(origin, type) and issubclass(origin, BaseModel)
    return composite or origin in (list, dict, set, tuple)


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        kept = [a for a in get_args(annotation) if a is not type(None)]
        return kept[0] if len(kept) == 1 else annotation
    return annotation


def _json(value: str) -> bool:
    try:
        json.loads(value)
    except ValueError:
        return False
    return True


def config_overrides() -> list[str]:
    """The ``SWITCHBOARD_CONFIG__`` variables set here: keys of the file they override."""
    return sorted(name for name in os.environ if name.upper().startswith("SWITCHBOARD_CONFIG__"))


def describe_errors(
    exc: ValidationError, env_prefix: str, raw: dict[str, Any] | None = None
) -> str:
    """One line per error: the YAML key path (``config: handles[0].segment``) or env variable;
    a routing rule's error also names the rule."""
    lines = []
    for error in exc.errors(include_url=False):
        loc, message = list(error["loc"]), error["msg"]
        if loc and loc[0] == "config":
            path, message = _within(_yaml_path(loc[1:]), message)
            where = "config key " + (path or "<top level>") + _rule_name(loc, raw)
        elif not loc:  # a check across variables; its message names them
            where = "environment"
        else:
            where = "environment: " + env_prefix + "__".join(str(p) for p in loc).upper()
        lines.append(f"{where}: {message}")
    return "invalid configuration\n  " + "\n  ".join(lines)


_RELATIVE_KEY = re.compile(
    r"([a-z_][a-z0-9_]*(?:\[\d+\])*(?:\.[a-z_][a-z0-9_]*(?:\[\d+\])*)*)( \(rule '[^']*'\))?: "
)
_VALUE_ERROR = "Value error, "  # pydantic's prefix to what a validator raised


def _within(path: str, message: str) -> tuple[str, str]:
    """A check across a section's keys names the key it refuses first in its message
    (``handles[1].user_id: ...``, ``rules[3].then.sla_minutes (rule 'x'): ...``): that key
    (and rule) joins the section's path."""
    message = message.removeprefix(_VALUE_ERROR)
    named = _RELATIVE_KEY.match(message)
    if named is None:
        return path, message
    key = named.group(1) + (named.group(2) or "")
    return (f"{path}.{key}" if path else key), message[named.end() :]


def _yaml_path(loc: list[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path


def read_secret(ref: SecretRef, key: str) -> SecretStr:
    """The value a ``SecretRef`` points at; ``key`` names it in the error when it is missing."""
    if ref.env is not None:
        value = os.environ.get(ref.env, "").strip()
        if not value:
            raise ConfigError(f"config key {key}.env: environment variable {ref.env} is not set")
        mask_in_logs(value)
        return SecretStr(value)
    assert ref.file is not None
    try:
        value = ref.file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"config key {key}.file: cannot read {ref.file}: {exc.strerror}"
        ) from None
    if not value:
        raise ConfigError(f"config key {key}.file: {ref.file} is empty")
    mask_in_logs(value)
    return SecretStr(value)


def _rule_name(loc: list[Any], raw: dict[str, Any] | None) -> str:
    if loc[1:3] != ["route", "rules"] or len(loc) < 4 or not isinstance(loc[3], int):
        return ""
    try:
        name = raw["route"]["rules"][loc[3]]["name"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return ""
    return f" (rule {name!r})"
