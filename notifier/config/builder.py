"""Resolving a validated file into watches, channels and projects."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from graphql import GraphQLSchema

from notifier import schema as gql
from notifier.config.channels import ChannelContext, build_channel
from notifier.config.fields import (
    ProjectModel,
    RuleModel,
    SettingsModel,
    WatchModel,
)
from notifier.config.problems import Problems
from notifier.config.values import (
    CREDENTIAL_TOKEN,
    DEFAULT_SCHEMA_FILE,
    ApiConfig,
    Config,
    DefaultsConfig,
    Loc,
    MetricsConfig,
    StorageConfig,
)
from notifier.errors import SchemaError
from notifier.model import Channel, Project, Rule, Schedule, Watch

PROJECT_ID = re.compile(r"^[A-Za-z0-9]{4}$")


class Builder:
    """Turns a validated file into resolved values, recording every problem."""

    def __init__(
        self,
        *,
        path: Path,
        settings: SettingsModel,
        skipped: set[Loc],
        environ: Mapping[str, str],
        problems: Problems,
        validate_queries: bool,
    ) -> None:
        self.path = path
        self.folder = path.absolute().parent
        self.settings = settings
        self.skipped = skipped
        self.environ = environ
        self.problems = problems
        self.validate_queries = validate_queries
        self._checked: dict[tuple[str, ...], list[str]] = {}
        model = settings.defaults
        self.defaults = DefaultsConfig(
            interval=model.interval,
            jitter=model.jitter,
            failure_threshold=model.failure_threshold,
            timezone=model.timezone,
            vanish_share=model.vanish_share,
        )
        self.api = self._api()
        self.schema, self.schema_source = self._schema(self.api.schema)

    def build(self) -> Config:
        """Resolve everything; problems land in ``self.problems``."""
        metrics = self.settings.metrics
        projects, watches = self._projects()
        return Config(
            path=self.path,
            api=self.api,
            storage=self._storage(),
            defaults=self.defaults,
            metrics=MetricsConfig(
                enabled=metrics.enabled, host=metrics.host, port=metrics.port
            ),
            projects=tuple(projects),
            watches=tuple(watches),
            channels=MappingProxyType(self._channels()),
            warnings=tuple(self.problems.warnings),
            schema_source=self.schema_source,
        )

    def _channels(self) -> dict[str, Channel]:
        context = ChannelContext(
            problems=self.problems,
            timezone=self.defaults.timezone,
            read_secret=self._read_secret,
        )
        channels: dict[str, Channel] = {}
        for name, model in self.settings.channels.items():
            if ("channels", name) in self.skipped:
                continue
            channel = build_channel(name, model, context)
            if channel is not None:
                channels[name] = channel
        return channels

    # -- files and secrets -------------------------------------------------

    def _file(self, name: str, *, credential: bool = False) -> Path:
        path = Path(name).expanduser()
        if path.is_absolute():
            return path
        credentials = self.environ.get("CREDENTIALS_DIRECTORY")
        if credential and credentials and (Path(credentials) / path).exists():
            return Path(credentials) / path
        return self.folder / path

    def _read_secret(self, loc: Loc, name: str) -> str | None:
        path = self._file(name, credential=True)
        try:
            text = path.read_text("utf-8").strip()
        except OSError as error:
            self.problems.error(loc, f"cannot read {str(path)!r}: {error.strerror}")
            return None
        if not text:
            self.problems.error(loc, f"{str(path)!r} is empty")
            return None
        return text

    def _token(self, loc: Loc, token: str | None, token_file: str | None) -> str | None:
        if token and token_file:
            self.problems.error(
                (*loc, "token_file"), "set token or token_file, not both"
            )
        if token_file:
            return self._read_secret((*loc, "token_file"), token_file)
        return token or None

    def _api(self) -> ApiConfig:
        model = self.settings.api
        token = self._token(("api",), model.token, model.token_file)
        credentials = self.environ.get("CREDENTIALS_DIRECTORY")
        if token is None and credentials:
            candidate = Path(credentials) / CREDENTIAL_TOKEN
            if candidate.is_file():
                token = self._read_secret(("api", "token_file"), str(candidate))
        return ApiConfig(
            url=model.url,
            token=token,
            timeout=model.timeout,
            rate_limit=model.rate_limit,
            burst=model.burst,
            concurrency=model.concurrency,
            per_page=model.per_page,
            max_retries=model.max_retries,
            schema=self._file(model.schema_file or DEFAULT_SCHEMA_FILE),
        )

    def _storage(self) -> StorageConfig:
        model = self.settings.storage
        if model.path:
            path = self._file(model.path)
        elif state := self.environ.get("STATE_DIRECTORY"):
            path = Path(state.split(":")[0]) / "atleta-notifier.sqlite"
        else:
            path = self.folder / "atleta-notifier.sqlite"
        return StorageConfig(
            path=path,
            retention_days=model.retention_days,
            retention_events=model.retention_events,
        )

    def _schema(self, path: Path) -> tuple[GraphQLSchema, Literal["pulled", "bundled"]]:
        if not self.validate_queries:
            return gql.bundled_schema(), "bundled"
        if not path.exists():
            if self.settings.api.schema_file is not None:
                self.problems.warn(
                    ("api", "schema"),
                    f"{str(path)!r} does not exist yet, so queries are checked "
                    "against the bundled schema (run `atleta-notifier schema pull`)",
                )
            return gql.bundled_schema(), "bundled"
        try:
            return gql.load_schema(path), "pulled"
        except SchemaError as error:
            self.problems.error(("api", "schema"), str(error))
            return gql.bundled_schema(), "bundled"

    # -- projects and watches -------------------------------------------------

    def _projects(self) -> tuple[list[Project], list[Watch]]:
        projects: list[Project] = []
        watches: list[Watch] = []
        first: dict[str, int] = {}
        for index, model in enumerate(self.settings.projects):
            loc: Loc = ("projects", index)
            if loc in self.skipped:
                continue
            if model.id in first:
                self.problems.error(
                    (*loc, "id"),
                    f"project {model.id!r} is defined twice "
                    f"(first as projects[{first[model.id]}])",
                )
            first.setdefault(model.id, index)
            if not PROJECT_ID.match(model.id):
                self.problems.error(
                    (*loc, "id"),
                    "expected the 4-character project code (letters and digits, "
                    "case-sensitive: the 4 characters after atleta.cc/b/ in the "
                    f"dashboard URL), got {model.id!r}",
                )
            self._check_channel_names((*loc, "channels"), model.channels)
            project = Project(id=model.id, name=model.name or model.id)
            projects.append(project)
            watches += self._project_watches(loc, project, model)
        return projects, watches

    def _project_watches(
        self, loc: Loc, project: Project, model: ProjectModel
    ) -> list[Watch]:
        if not model.watches:
            self.problems.warn(loc, f"project {model.id!r} has no watches")
        token = self._token(loc, model.token, model.token_file)
        watches: dict[str, tuple[int, Watch]] = {}
        for number, watch_model in enumerate(model.watches):
            watch_loc = (*loc, "watches", number)
            if watch_loc in self.skipped:
                continue
            watch = self._watch(watch_loc, project, model, watch_model, token)
            if watch is None:
                continue
            if watch.name in watches:
                self.problems.error(
                    watch_loc,
                    f"a watch named {watch.name!r} already exists in project "
                    f"{model.id!r} (watches[{watches[watch.name][0]}]); give one "
                    'of them another name = "..."',
                )
                continue
            watches[watch.name] = (number, watch)
        return [watch for _, watch in watches.values()]

    def _check_channel_names(self, loc: Loc, names: Sequence[str]) -> None:
        known = sorted(self.settings.channels)
        for index, name in enumerate(names):
            if name in self.settings.channels:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listing = ", ".join(known) or "none defined"
            self.problems.error(
                (*loc, index),
                f"unknown channel {name!r}{hint} (channels: {listing})",
            )

    def _watch(
        self,
        loc: Loc,
        project: Project,
        project_model: ProjectModel,
        model: WatchModel,
        project_token: str | None,
    ) -> Watch | None:
        found = self._shape(loc, model)
        if found is None:
            return None
        shape, source_loc = found

        watch_id = f"{project.id}/{shape.name}"
        channels = project_model.channels if model.channels is None else model.channels
        if model.channels is not None:
            self._check_channel_names((*loc, "channels"), model.channels)
        if not channels:
            self.problems.warn(
                loc,
                f"watch {watch_id} has no channels, so its events are recorded "
                "but sent nowhere",
            )
        token = None if shape.public else (project_token or self.api.token)
        if token is None and not shape.public and model.enabled:
            self._missing_token(loc, watch_id)

        watch = Watch(
            project=project,
            name=shape.name,
            entity=shape.entity,
            query=shape.query,
            records=shape.records,
            key=shape.key,
            preset=model.preset,
            single=shape.single,
            paginate=shape.paginate,
            per_page=model.per_page or self.api.per_page,
            public=shape.public,
            variables=dict(model.variables),
            ignore=shape.ignore,
            rules=self._rules(loc, model.rules),
            channels=tuple(channels),
            schedule=self._schedule(loc, model),
            enabled=model.enabled,
            notify_baseline=model.baseline_events,
            failure_threshold=model.failure_threshold
            or self.defaults.failure_threshold,
            vanish_share=model.vanish_share or self.defaults.vanish_share,
            token=token,
        )
        self._check_query(source_loc, watch)
        return watch

    def _missing_token(self, loc: Loc, watch_id: str) -> None:
        # An unset ${VAR} or unreadable file was reported already.
        if self.problems.is_broken(("api", "token")) or self.problems.is_broken(
            (*loc[:2], "token")
        ):
            return
        self.problems.error(
            loc,
            f"watch {watch_id} needs an API token: set [api] token (or "
            "token_file), or token on this project",
        )

    def _shape(self, loc: Loc, model: WatchModel) -> tuple[gql.Preset, Loc] | None:
        """The watch's query and record layout: its source, with its own keys over."""
        base, source_loc = self._source(loc, model)
        if base is None:
            return None
        records = model.records or base.records
        if not records:
            self.problems.error(
                (*loc, "records"),
                'a watch with its own query needs records = "path.to.the.list" '
                '(for example "project.registrations.data")',
            )
            return None
        name = model.name or base.name
        if not name:
            self.problems.error(
                (*loc, "name"), 'a watch with its own query needs a name = "..."'
            )
            return None
        single = base.single if model.single is None else model.single
        paginate = base.paginate and not model.single
        return (
            replace(
                base,
                name=name,
                entity=model.entity or base.entity or gql.default_entity(records),
                records=records,
                key=model.key or base.key,
                single=single,
                paginate=paginate if model.paginate is None else model.paginate,
                public=base.public if model.public is None else model.public,
                ignore=tuple(dict.fromkeys((*base.ignore, *model.ignore))),
            ),
            source_loc,
        )

    def _source(self, loc: Loc, model: WatchModel) -> tuple[gql.Preset | None, Loc]:
        given = [
            key for key in ("preset", "query", "query_file") if getattr(model, key)
        ]
        if len(given) != 1:
            what = " and ".join(given) if given else "none of them"
            self.problems.error(
                loc,
                'a watch needs exactly one of preset = "...", query = """...""" '
                f'or query_file = "..." (found {what})',
            )
            return None, loc
        key = given[0]
        if key == "preset":
            preset = gql.PRESETS.get(str(model.preset))
            if preset is None:
                known = sorted(gql.PRESETS)
                close = difflib.get_close_matches(str(model.preset), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problems.error(
                    (*loc, "preset"),
                    f"unknown preset {model.preset!r}{hint} "
                    f"(presets: {', '.join(known)})",
                )
            return preset, (*loc, "preset")
        if key == "query_file":
            return self._query_file((*loc, key), str(model.query_file)), (*loc, key)
        return (
            gql.Preset(
                name="", entity="", query=str(model.query), records="", paginate=True
            ),
            (*loc, "query"),
        )

    def _query_file(self, loc: Loc, name: str) -> gql.Preset | None:
        path = self._file(name)
        try:
            text = path.read_text("utf-8")
        except OSError as error:
            self.problems.error(loc, f"cannot read {str(path)!r}: {error.strerror}")
            return None
        try:
            return gql.parse_query_file(text, name=path.stem)
        except ValueError as error:
            self.problems.error(loc, f"{str(path)!r}: {error}")
            return None

    def _rules(self, loc: Loc, models: Sequence[RuleModel]) -> tuple[Rule, ...]:
        rules = []
        for index, model in enumerate(models):
            self._check_channel_names(
                (*loc, "rules", index, "channels"), model.channels
            )
            rules.append(
                Rule(
                    kinds=tuple(model.kinds),
                    fields=tuple(model.fields),
                    when=model.when,
                    channels=tuple(model.channels),
                )
            )
        return tuple(rules)

    def _schedule(self, loc: Loc, model: WatchModel) -> Schedule:
        if model.interval is not None and model.cron is not None:
            self.problems.error((*loc, "cron"), "set interval or cron, not both")
        timezone = self.defaults.timezone
        if model.cron is not None:
            jitter = model.jitter if model.jitter is not None else self.defaults.jitter
            return Schedule(cron=model.cron, jitter=jitter, timezone=timezone)
        interval = model.interval or self.defaults.interval
        if model.jitter is not None:
            jitter = model.jitter
        else:
            # A default jitter must not swamp a short interval.
            jitter = min(self.defaults.jitter, interval / 10)
        return Schedule(interval=interval, jitter=jitter, timezone=timezone)

    def _check_query(self, loc: Loc, watch: Watch) -> None:
        shape_key = (
            watch.query,
            watch.records,
            watch.key,
            str(watch.single),
            str(watch.paginate),
            ",".join(sorted(watch.variables)),
        )
        if shape_key not in self._checked:
            self._checked[shape_key] = gql.check_shape(
                watch.query,
                records=watch.records,
                key=watch.key,
                single=watch.single,
                paginate=watch.paginate,
                variables=watch.variables,
            )
        for problem in self._checked[shape_key]:
            self.problems.error(loc, self._in_file(loc, problem))
        unparsed = any(p.startswith("Syntax Error") for p in self._checked[shape_key])
        if not self.validate_queries or unparsed:
            return
        schema_key = ("schema", watch.query)
        if schema_key not in self._checked:
            self._checked[schema_key] = gql.validate_query(self.schema, watch.query)
        problems = self._checked[schema_key] or gql.check_variable_values(
            self.schema, watch.query, watch.variables
        )
        for problem in problems:
            message = f"fails the {self.schema_source} schema: "
            if self.schema_source == "pulled":
                self.problems.error(loc, message + self._in_file(loc, problem))
            else:
                self.problems.warn(loc, message + self._in_file(loc, problem))

    def _in_file(self, loc: Loc, problem: str) -> str:
        """Add the config file's line to a position inside an inline query."""
        match = _QUERY_POSITION.search(problem)
        start = self.problems.key_line(loc) if loc[-1] == "query" else None
        if match is None or start is None:
            return problem
        opening = self.problems.text.splitlines()[start - 1]
        # TOML drops the newline right after an opening triple quote.
        offset = 1 if _TRIPLE_QUOTE_END.search(opening) else 0
        line = start + offset + int(match.group(1)) - 1
        return f"{problem[: match.end()]}, file line {line}{problem[match.end() :]}"


_QUERY_POSITION = re.compile(r"query line (\d+), column \d+")
_TRIPLE_QUOTE_END = re.compile(r"=\s*(\"\"\"|\'\'\')\s*$")
