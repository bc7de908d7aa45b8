"""Compose files as corral objects (corral.client.cli.compose; docs/compose.md): every
key translated, refusals and the one warning naming keys, the project name's rules,
interpolation, and `corral apply -f` telling a Compose file by its shape."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from corral.client.api import CorralError, to_builtins
from corral.client.cli.compose import (
    PROJECT_LABEL,
    SERVICE_LABEL,
    ComposeError,
    normalize_project_name,
    project_name,
    read_compose,
    translate,
)
from corral.client.cli.main import cli
from corral.client.cli.manifests import load_manifests

FULL = """
name: shop
x-common: &common
  labels: {tier: app}
services:
  web:
    <<: *common
    image: corral-test/busybox:1
    entrypoint: /bin/sh -c
    command: "httpd -f -p '8080' -h /"
    ports: ["30080:8080", "9000"]
    networks: [front, back]
    environment:
      GREETING: hello
      DEBUG: ${DEBUG:-0}
      FLAG: true
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://localhost:8080/"]
      interval: 5s
      timeout: 1500ms
      retries: 2
      start_period: 1m
    deploy:
      replicas: 2
      labels: {team: shop}
      resources:
        limits: {cpus: "0.5", memory: 64M}
        reservations: {cpus: 0.25, memory: 32M}
      placement:
        constraints: ["node.labels.disk==ssd"]
      update_config: {parallelism: 2, order: start-first, failure_action: rollback}
    stop_signal: SIGINT
    stop_grace_period: 1m30s
    restart: always
    depends_on: [db]
    container_name: shop-web
  db:
    image: corral-test/busybox:1
    command: ["sleep", "3600"]
    environment: ["A=1", "FROM_SHELL", "MISSING"]
    networks:
      back: {aliases: [database]}
    volumes:
      - data:/data
      - type: volume
        source: data
        target: /ro
        read_only: true
        volume: {subpath: sub}
      - /scratch
      - type: tmpfs
        target: /tmp
        tmpfs: {size: 16M}
    expose: ["5432", "53/udp"]
    healthcheck:
      test: pg_isready
  worker:
    image: corral-test/busybox:1
    healthcheck: {disable: true}
  tools:
    image: corral-test/busybox:1
    profiles: [debug]
networks:
  front:
    labels: {zone: dmz}
  back:
    ipam:
      config: [{subnet: 10.77.0.0/16}]
  outside:
    external: true
volumes:
  data:
    driver_opts: {size: 64m}
  cache: {}
  shared:
    external: true
"""


def objects(text: str, project: str | None = None, env: dict[str, str] | None = None) -> Any:
    document = read_compose(textwrap.dedent(text), "/srv/shop/compose.yaml")
    assert document is not None
    return translate(document, "/srv/shop/compose.yaml", project, env or {})


def by_kind(project: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m.kind.kind, m.name): to_builtins(m.spec) for m in project.manifests}


def test_every_key_of_a_full_file_is_translated() -> None:
    project = objects(FULL, env={"FROM_SHELL": "x"})
    assert project.name == "shop"
    found = by_kind(project)
    assert [(m.kind.kind, m.name, m.namespace) for m in project.manifests] == [
        ("Network", "shop-front", "default"),
        ("Network", "shop-back", "default"),
        ("Network", "shop-default", "default"),  # worker names no network
        ("PersistentVolumeClaim", "data", "shop"),
        ("PersistentVolumeClaim", "cache", "shop"),
        ("Deployment", "web", "shop"),
        ("Service", "web", "shop"),
        ("Deployment", "db", "shop"),
        ("Service", "db", "shop"),
        ("Deployment", "worker", "shop"),
        ("Service", "worker", "shop"),
    ]
    assert project.skipped == ("tools",)
    front = found["Network", "shop-front"]["metadata"]["labels"]
    assert front == {"zone": "dmz", PROJECT_LABEL: "shop", "com.docker.compose.network": "front"}
    assert found["Network", "shop-back"]["spec"]["subnet"] == "10.77.0.0/16"
    assert found["PersistentVolumeClaim", "data"]["spec"]["resources"] == {
        "requests": {"storage": "64Mi"}
    }
    assert found["PersistentVolumeClaim", "cache"]["spec"]["resources"] == {
        "requests": {"storage": "1Gi"}
    }

    web = found["Deployment", "web"]
    selector = {PROJECT_LABEL: "shop", SERVICE_LABEL: "web"}
    assert web["metadata"]["labels"] == {"team": "shop", **selector}
    assert web["metadata"]["namespace"] == "shop"
    spec = web["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 2, "maxUnavailable": 0}
    assert spec["autoRollback"] == {}  # failure_action: rollback (the defaults)
    template = spec["template"]
    assert template["command"] == ["/bin/sh", "-c"]  # entrypoint
    assert template["args"] == ["httpd", "-f", "-p", "8080", "-h", "/"]  # command
    assert template["env"] == {"GREETING": "hello", "DEBUG": "0", "FLAG": "true"}
    assert template["labels"] == {"tier": "app", **selector}
    assert template["resources"] == {
        "requests": {"cpu": "0.25", "memory": "32Mi"},
        "limits": {"cpu": "0.5", "memory": "64Mi"},
    }
    assert template["networks"] == ["shop-front", "shop-back"]
    assert template["nodeSelector"] == {"disk": "ssd"}
    assert template["stopSignal"] == "SIGINT"
    assert template["terminationGracePeriodSeconds"] == 90
    probe = {
        "exec": {"command": ["wget", "-qO-", "http://localhost:8080/"]},
        "initialDelaySeconds": 60,
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 2,
    }
    assert template["readinessProbe"] == probe and template["livenessProbe"] == probe
    assert [p["containerPort"] for p in template["ports"]] == [8080, 9000]
    front_door = found["Service", "web"]["spec"]
    assert front_door["type"] == "NodePort" and front_door["network"] == "shop-front"
    assert front_door["selector"] == selector
    assert [(p["port"], p.get("nodePort", 0)) for p in front_door["ports"]] == [
        (8080, 30080),
        (9000, 0),
    ]

    db = found["Deployment", "db"]["spec"]["template"]
    assert db["args"] == ["sleep", "3600"] and "command" not in db
    assert db["env"] == {"A": "1", "FROM_SHELL": "x"}  # MISSING: unset, left out
    assert db["networks"] == ["shop-back"]
    assert db["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "anon-2", "emptyDir": {}},
        {"name": "anon-3", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    assert db["volumeMounts"] == [
        {"name": "data", "mountPath": "/data"},
        {"name": "data", "mountPath": "/ro", "readOnly": True, "subPath": "sub"},
        {"name": "anon-2", "mountPath": "/scratch"},
        {"name": "anon-3", "mountPath": "/tmp"},
    ]
    assert db["readinessProbe"]["exec"]["command"] == ["/bin/sh", "-c", "pg_isready"]
    db_probe = next(m for m in project.manifests if m.name == "db").spec.spec.template
    readiness = db_probe.readiness_probe
    assert (readiness.period_seconds, readiness.timeout_seconds) == (30, 30)  # Docker's
    assert readiness.failure_threshold == 3
    db_front = found["Service", "db"]["spec"]
    assert db_front.get("type", "ClusterIP") == "ClusterIP" and "clusterIP" not in db_front
    assert [(p["port"], p.get("protocol", "TCP")) for p in db_front["ports"]] == [
        (5432, "TCP"),
        (53, "UDP"),
    ]

    worker = found["Deployment", "worker"]["spec"]["template"]
    assert "readinessProbe" not in worker and "livenessProbe" not in worker
    assert worker["networks"] == ["shop-default"]  # Compose's default network
    # no ports and no expose: a headless Service, the name answers the replicas' addresses
    assert found["Service", "worker"]["spec"]["clusterIP"] == "None"
    assert "ports" not in found["Service", "worker"]["spec"]

    # one warning naming every key corral does not support
    assert project.unsupported == (
        "services.web.depends_on",
        "services.web.container_name",
        "services.db.networks.back.aliases",
    )


def test_the_default_network_is_made_only_when_a_service_names_no_network() -> None:
    project = objects(
        """
        services:
          a: {image: corral-test/busybox:1}
        """,
        project="p1",
    )
    first = project.manifests[0]
    assert (first.kind.kind, first.name) == ("Network", "p1-default")
    named = objects(
        """
        services:
          a: {image: corral-test/busybox:1, networks: [x]}
        networks:
          x: {}
        """,
        project="p1",
    )
    assert [m.name for m in named.manifests if m.kind.kind == "Network"] == ["p1-x"]


@pytest.mark.parametrize(
    ("service", "key", "why"),
    [
        ("{image: i, volumes: ['/srv/data:/data']}", "services.s.volumes[0]", "bind mount"),
        ("{image: i, volumes: ['./d:/data']}", "services.s.volumes[0]", "bind mount"),
        (
            "{image: i, volumes: [{type: bind, source: /x, target: /y}]}",
            "services.s.volumes[0]",
            "never a host path",
        ),
        ("{image: i, volumes: ['nope:/data']}", "services.s.volumes[0]", "not declared"),
        ("{image: i, ports: ['127.0.0.1:8080:80']}", "services.s.ports[0]", "every address"),
        ("{image: i, ports: ['8000-8010:80']}", "services.s.ports[0]", "range"),
        (
            "{image: i, ports: [{target: 80, published: 8080, mode: host}]}",
            "services.s.ports[0].mode",
            "every node",
        ),
        ("{image: i, ports: ['70000:80']}", "services.s.ports[0]", "not a port number"),
        ("{image: i, network_mode: host}", "services.s.network_mode", "network namespace"),
        ("{image: i, user: '1000'}", "services.s.user", "image's user"),
        ("{build: .}", "services.s.build", "does not build"),
        ("{command: x}", "services.s.image", "missing"),
        ("{image: i, restart: sometimes}", "services.s.restart", "on-failure[:N]"),
        ("{image: i, deploy: {mode: global}}", "services.s.deploy.mode", "replicated"),
        (
            "{image: i, deploy: {restart_policy: {condition: sometimes}}}",
            "services.s.deploy.restart_policy.condition",
            "any, on-failure or none",
        ),
        (
            "{image: i, deploy: {placement: {constraints: ['node.role==manager']}}}",
            "services.s.deploy.placement.constraints[0]",
            "node.labels",
        ),
        ("{image: i, networks: [nowhere]}", "services.s.networks[0]", "not declared"),
        ("{image: i, stop_grace_period: soon}", "services.s.stop_grace_period", "duration"),
        ("{image: i, secrets: [x]}", "services.s.secrets", "no secrets"),
        ("{image: i, healthcheck: {test: [WHAT, x]}}", "services.s.healthcheck.test", "CMD"),
        ("{image: i, command: 'sh -c \"open'}", "services.s.command", "No closing quotation"),
        ('{image: i, entrypoint: "a \'b"}', "services.s.entrypoint", "No closing quotation"),
        # the Compose Specification's schema names what it refuses
        ("{image: i, imagee: x}", "services.s", "imagee"),
        ("{image: i, ports: 80}", "services.s.ports", "not of type"),
    ],
)
def test_a_key_that_would_change_meaning_is_refused_naming_it(
    service: str, key: str, why: str
) -> None:
    with pytest.raises(ComposeError) as caught:
        objects(f"services:\n  s: {service}\n", project="p")
    assert f"`{key}`" in str(caught.value) and why in str(caught.value)
    assert str(caught.value).startswith("/srv/shop/compose.yaml: ")


def test_a_file_with_no_services_is_refused_rather_than_deploying_nothing_silently() -> None:
    with pytest.raises(ComposeError, match=r"`services`: no services: the file deploys nothing"):
        objects("services: {}\n", project="p")


def test_a_service_name_that_is_no_dns_label_is_refused() -> None:
    with pytest.raises(ComposeError, match=r"`services\.my_db`: 'my_db' is not a DNS label"):
        objects("services:\n  my_db: {image: i}\n", project="p")


def test_a_network_driver_corral_cannot_give_is_refused() -> None:
    with pytest.raises(ComposeError, match=r"`networks\.n\.driver`: 'macvlan'"):
        objects("services:\n  s: {image: i, networks: [n]}\nnetworks:\n  n: {driver: macvlan}\n")


def test_a_bad_value_in_a_translated_object_names_the_compose_service() -> None:
    with pytest.raises(CorralError, match=r"compose.yaml: services\.s: .*labels"):
        objects("services:\n  s: {image: i, labels: {a: 'not a label value'}}\n", project="p")


def test_the_project_name_is_the_stack_then_the_environment_then_name_then_the_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("COMPOSE_PROJECT_NAME", raising=False)
    folder = tmp_path / "My Shop.v2"
    folder.mkdir()
    source = str(folder / "compose.yaml")
    assert project_name(None, {}, source) == "myshopv2"
    assert project_name(None, {"name": "named"}, source) == "named"
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", "from-env")
    assert project_name(None, {"name": "named"}, source) == "from-env"
    assert project_name("stack", {"name": "named"}, source) == "stack"
    assert normalize_project_name("__My_App-1") == "my_app-1"
    with pytest.raises(ComposeError, match=r"'my_app' is not a DNS label.*-p"):
        project_name("my_app", {}, source)
    monkeypatch.delenv("COMPOSE_PROJECT_NAME")
    underscored = tmp_path / "my_app"
    underscored.mkdir()
    with pytest.raises(ComposeError, match=r"folder of .* \('my_app'\): 'my_app'"):
        project_name(None, {}, str(underscored / "compose.yaml"))


def test_interpolation_reads_the_environment_and_the_dot_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("TAG=1\nexport WHO='file'\n# c\nPORT=30090\n")
    monkeypatch.setenv("WHO", "shell")  # the environment wins over .env
    source = str(tmp_path / "compose.yaml")
    text = """
    name: p
    services:
      s:
        image: corral-test/busybox:${TAG}
        environment:
          WHO: $WHO
          COST: $$5
          ALT: ${UNSET:-${TAG}x}
          SET: ${TAG:+yes}
        ports: ["${PORT}:80"]
        env_file: [vars.env]
    """
    (tmp_path / "vars.env").write_text("FROM_FILE=1\nWHO=overridden-by-environment-key\n")
    document = read_compose(textwrap.dedent(text), source)
    assert document is not None
    project = translate(document, source)
    template = to_builtins(project.manifests[1].spec)["spec"]["template"]
    assert template["image"] == "corral-test/busybox:1"
    assert template["env"] == {
        "FROM_FILE": "1",
        "WHO": "shell",
        "COST": "$5",
        "ALT": "1x",
        "SET": "yes",
    }
    service = to_builtins(project.manifests[2].spec)["spec"]
    assert service["ports"][0]["nodePort"] == 30090
    with pytest.raises(ComposeError, match=r"`services\.s\.image`: required variable NEED: give"):
        objects("services:\n  s: {image: '${NEED:?give it}'}\n", project="p")


def test_apply_tells_a_compose_file_from_a_manifest_by_its_shape() -> None:
    compose = load_manifests("name: p\nservices:\n  s: {image: i}\n", "c.yaml")
    assert [(m.kind.kind, m.name) for m in compose] == [
        ("Network", "p-default"),
        ("Deployment", "s"),
        ("Service", "s"),
    ]
    # a manifest that happens to have `services` is still a manifest (it has a kind)
    with pytest.raises(CorralError, match="unknown kind 'Thing'"):
        load_manifests("kind: Thing\nservices: {}\n", "m.yaml")
    # aliases stay refused in manifests
    with pytest.raises(CorralError, match="aliases"):
        load_manifests("a: &x {kind: Deployment}\nb: *x\n", "m.yaml")


def test_nested_aliases_that_expand_without_bound_are_refused() -> None:
    lines = ["name: p", "services: {s: {image: i}}", "x-0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for level in range(1, 7):
        lines.append(f"x-{level}: &a{level} [{', '.join([f'*a{level - 1}'] * 10)}]")
    with pytest.raises(ComposeError, match="once its aliases are expanded"):
        read_compose("\n".join(lines) + "\n", "bomb.yaml")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[" * 70 + "]" * 70, "nest deeper than 64 levels, the limit for a Compose file"),
        ("9" * 100, "an integer of 100 characters: at most 64 in a Compose file"),
    ],
    ids=["nesting", "integer"],
)
def test_a_compose_file_past_the_yaml_limits_is_refused_naming_the_limit(
    value: str, message: str
) -> None:
    with pytest.raises(ComposeError, match=message):
        read_compose(f"services: {{s: {{image: i, x-deep: {value}}}}}\n", "c.yaml", strict=True)


def test_apply_prints_one_warning_naming_the_unsupported_keys_before_sending(
    tmp_path: Path,
) -> None:
    file = tmp_path / "compose.yaml"
    file.write_text(
        "name: p\nservices:\n  s: {image: i, depends_on: [t], tty: true}\n  t: {image: i}\n"
    )
    result = CliRunner().invoke(
        cli, ["--nats", "nats://127.0.0.1:1", "--timeout", "0.2", "apply", "-f", str(file)]
    )
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert warnings == [
        f"warning: {file} (Compose project p): dropped fields corral does not support: "
        "services.s.depends_on, services.s.tty"
    ]


def test_a_namespace_option_other_than_the_project_is_an_error(tmp_path: Path) -> None:
    file = tmp_path / "compose.yaml"
    file.write_text("name: p\nservices:\n  s: {image: i}\n")
    result = CliRunner().invoke(
        cli, ["--nats", "nats://127.0.0.1:1", "apply", "-n", "other", "-f", str(file)]
    )
    assert result.exit_code != 0
    assert "('p') does not match the namespace 'other'" in result.output


def test_stack_deploy_refuses_a_file_that_is_no_compose_file(tmp_path: Path) -> None:
    file = tmp_path / "m.yaml"
    file.write_text("kind: Deployment\nmetadata: {name: a}\n")
    result = CliRunner().invoke(cli, ["stack", "deploy", "-c", str(file), "s"])
    assert result.exit_code == 1 and "not a Compose file" in result.stderr
    file.write_text("services: [\n")
    result = CliRunner().invoke(cli, ["stack", "deploy", "-c", str(file), "s"])
    assert result.exit_code == 1 and f"{file}: not valid YAML" in result.stderr


def test_a_healthcheck_without_test_is_no_probe_and_is_warned_about() -> None:
    project = objects("services:\n  s: {image: i, healthcheck: {interval: 5s}}\n", project="p")
    template = project.manifests[1].spec.spec.template
    assert template.readiness_probe is None and template.liveness_probe is None
    assert project.unsupported == ("services.s.healthcheck",)


@pytest.mark.parametrize(
    ("keys", "policy", "warned"),
    [
        ("{}", "Always", ()),  # Swarm's default (condition any)
        ("{restart: always}", "Always", ()),
        ("{restart: unless-stopped}", "Always", ()),
        ("{restart: 'no'}", "Never", ()),
        ("{restart: on-failure}", "OnFailure", ()),
        (
            "{restart: 'on-failure:3'}",
            "OnFailure",
            ("services.s.restart (on-failure's maximum of 3 restarts)",),
        ),
        ("{deploy: {restart_policy: {condition: none}}}", "Never", ()),
        ("{deploy: {restart_policy: {condition: on-failure}}}", "OnFailure", ()),
        # Swarm's deploy.restart_policy wins over `restart`, as in Compose
        ("{restart: 'no', deploy: {restart_policy: {condition: any}}}", "Always", ()),
    ],
)
def test_restart_and_the_restart_policy_become_the_templates_restart_policy(
    keys: str, policy: str, warned: tuple[str, ...]
) -> None:
    service = "{image: i, " + keys[1:] if keys != "{}" else "{image: i}"
    project = objects(f"services:\n  s: {service}\n", project="p")
    assert project.manifests[1].spec.spec.template.restart_policy == policy
    assert project.unsupported == warned


def test_every_object_of_a_compose_file_names_its_project_which_delete_f_removes() -> None:
    from corral.client.cli.compose import ComposeManifest
    from corral.client.cli.write_commands import compose_projects

    compose = load_manifests("name: p\nservices:\n  s: {image: i}\n", "c.yaml")
    assert {m.project for m in compose if isinstance(m, ComposeManifest)} == {"p"}
    assert len(compose) == 3 and all(isinstance(m, ComposeManifest) for m in compose)
    plain = load_manifests("kind: Network\nmetadata: {name: n}\n", "m.yaml")
    assert compose_projects([*plain, *compose, *compose]) == ["p"]
    assert compose_projects(plain) == []


def test_delete_volumes_is_refused_without_a_compose_file(tmp_path: Path) -> None:
    file = tmp_path / "m.yaml"
    file.write_text("kind: Network\nmetadata: {name: n}\n")
    for args in (["-f", str(file)], ["network", "n"]):
        result = CliRunner().invoke(
            cli, ["--nats", "nats://127.0.0.1:1", "delete", "--volumes", *args]
        )
        assert result.exit_code == 2, result.output
        assert "--volumes is for Compose files" in result.output


def test_a_key_given_twice_is_refused_but_one_beside_a_merge_overrides_it() -> None:
    with pytest.raises(ComposeError, match="the key 'image' is given twice in a Compose file"):
        read_compose("services:\n  web:\n    image: a:1\n    image: b:1\n", "c.yaml", strict=True)
    document = read_compose(
        "x: &common\n  image: a:1\nservices:\n  web:\n    <<: *common\n    image: b:1\n",
        "c.yaml",
    )
    assert document is not None and document["services"]["web"]["image"] == "b:1"


def test_two_services_publishing_one_node_port_are_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    """The whole file is checked first: the network, `a` and `b`'s Deployment were
    applied before netmgr refused `b`'s Service. Deleting such a file is not refused."""
    file = tmp_path / "compose.yaml"
    file.write_text(
        'name: shop\nservices:\n  a: {image: "app:1", ports: ["31000:80"]}\n'
        '  b: {image: "app:1", ports: ["31000:8080"]}\n'
    )
    nats = ["--nats", "nats://127.0.0.1:1", "--timeout", "0.2"]
    for verb in (["apply", "-f"], ["stack", "deploy", "-c"]):
        result = CliRunner().invoke(cli, [*nats, *verb, str(file)])
        assert result.exit_code == 1, result.output
        assert "nodePort` 31000/TCP is also Service a's" in result.output, result.output
    result = CliRunner().invoke(cli, [*nats, "delete", "-f", str(file)])
    assert "nodePort" not in result.output  # it goes on, to the (absent) server
    assert objects(file.read_text()).manifests  # translated alike
