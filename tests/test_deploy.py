"""The deployment files agree with the project, with Ray, and with each other.

- ``Dockerfile``: its install step is the README's install command; a lint (pinned base image, the
  project's Ray version, no ADD of URLs, apt-get hygiene, non-root user, a CMD, what a cluster node
  needs);
- ``deploy/aws.yaml`` and ``deploy/gcp.yaml`` validate against the schema that ships with the
  installed Ray (``ray/autoscaler/ray-schema.json``) and pass Ray's own config checks; worker types
  scale from zero, one of them has GPUs; one image everywhere;
- ``deploy/kuberay-raycluster.yaml``: in-tree autoscaling, workers from zero, ``rayVersion`` is the
  installed Ray;
- ``docs/cluster.md`` only tells the user to run ``python -m study.lottery`` and ``ray`` commands
  with flags that exist.

Fast, offline: nothing is built, launched or contacted.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

if os.environ.get("PRUNE_PLATFORM_IMAGE"):  # set in the image, which holds no Dockerfile nor deploy/
    pytest.skip("inside the project's image: the deployment files are not part of it", allow_module_level=True)

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "README.md"
PYPROJECT = ROOT / "pyproject.toml"
DOCS = ROOT / "docs" / "cluster.md"
LAUNCHER_CONFIGS = {"aws": ROOT / "deploy" / "aws.yaml", "gcp": ROOT / "deploy" / "gcp.yaml"}
KUBERAY = ROOT / "deploy" / "kuberay-raycluster.yaml"

# Flags of study.lottery that another change is adding right now: docs/cluster.md may use them
# while the parser lacks them, provided it says they are being added.  Value: how many arguments.
BEING_ADDED = {"--storage": 1, "--resume": 0}

SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "2>&1", "<"}


# ---------------------------------------------------------------- the Dockerfile, parsed by hand

@dataclass
class Instruction:
    keyword: str                  # upper case: FROM, RUN, ...
    value: str                    # the arguments, continuation lines joined
    line: int
    flags: dict[str, str] = field(default_factory=dict)  # --mount=..., --chown=... (RUN, COPY, ADD, FROM)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments (also inside continued instructions,
    as Docker drops them) and parser directives skipped.  Heredocs are refused."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        joined = " ".join(p for p in parts if p)
        parts = []
        keyword, _, rest = joined.partition(" ")
        ins = Instruction(keyword.upper(), rest.strip(), start)
        if ins.keyword in {"RUN", "COPY", "ADD", "FROM"}:
            while ins.value.startswith("--"):
                flag, _, ins.value = ins.value.partition(" ")
                name, _, val = flag[2:].partition("=")
                ins.flags[name] = val
                ins.value = ins.value.strip()
        assert "<<" not in ins.value or ins.keyword != "RUN", f"line {start}: heredocs are not parsed here"
        out.append(ins)
    assert not parts, "the Dockerfile ends inside a continued instruction"
    return out


def shell_commands(run: str) -> list[str]:
    """The simple commands of a RUN line, split at &&, ||, ; and |."""
    return [c.strip() for c in re.split(r"&&|\|\||;|\|", run) if c.strip()]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for token in shlex.split(ins.value):
                key, sep, val = token.partition("=")
                assert sep, f"line {ins.line}: use ENV key=value (got {token!r})"
                env[key] = val
    return env


def resolve_args(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def readme_install_command() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README.md has no ```bash block"
    return blocks[0].strip().splitlines()[0].strip()


def ray_requirement() -> str:
    """The Ray requirement of pyproject.toml, e.g. '==2.60.*' (of ray[tune])."""
    m = re.search(r'"ray\[[^\]]*\]\s*([^"]*)"', PYPROJECT.read_text())
    assert m, "pyproject.toml has no ray[...] dependency"
    return m.group(1).strip()


def project_packages() -> list[str]:
    m = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include\s*=\s*\[([^\]]*)\]", PYPROJECT.read_text())
    assert m, "pyproject.toml has no [tool.setuptools.packages.find] include"
    return sorted({p.strip().strip("\"'").rstrip("*").rstrip(".") for p in m.group(1).split(",") if p.strip()})


# ------------------------------------------------------------------------------ (a) install step

def test_parsers_see_the_install_step_and_the_readme_command():
    """The helpers themselves: a continued RUN with a flag, and the README's first bash line."""
    ins = parse_dockerfile('# c\nRUN --mount=type=cache,target=/x \\\n    # dropped\n    a && b ".[dev]"\nCMD ["x"]\n')
    assert [(i.keyword, i.value, i.flags) for i in ins] == [
        ("RUN", 'a && b ".[dev]"', {"mount": "type=cache,target=/x"}), ("CMD", '["x"]', {})]
    assert readme_install_command() == "scripts/setup"


def install_runs(dockerfile) -> list[Instruction]:
    return [i for i in dockerfile if i.keyword == "RUN" and readme_install_command() in i.value]


def test_the_image_installs_with_the_readme_command(dockerfile):
    """The README's install command, without the test suite's Debian packages (not root in the image)."""
    install = f"{readme_install_command()} --no-system-packages"
    venv_runs = install_runs(dockerfile)
    assert len(venv_runs) == 1, f"expected one RUN that runs the install command, found {len(venv_runs)}"
    assert venv_runs[0].value == install, (
        f"Dockerfile line {venv_runs[0].line} installs with\n  {venv_runs[0].value}\n"
        f"but the README's install command is\n  {install}")
    # ... in /app, whose venv is first on PATH
    workdir = [i.value for i in dockerfile if i.keyword == "WORKDIR" and i.line < venv_runs[0].line]
    assert workdir and workdir[-1] == "/app"
    assert env_of(dockerfile)["PATH"].split(":")[0] == "/app/.venv/bin"


def test_the_image_holds_every_package_before_installing(dockerfile):
    install_line = install_runs(dockerfile)[0].line
    copied = set()
    for ins in dockerfile:
        if ins.keyword == "COPY" and ins.line < install_line:
            copied.update(Path(s).parts[0] for s in shlex.split(ins.value)[:-1])
    missing = [p for p in project_packages() + ["pyproject.toml", "README.md", "scripts"] if p not in copied]
    assert not missing, f"copy these before the install step (an editable install maps only what exists): {missing}"


# ------------------------------------------------------------------------------- (b) lint

def test_base_image_is_pinned(dockerfile):
    args: dict[str, str] = {}
    froms = []
    for ins in dockerfile:
        if ins.keyword == "ARG" and not froms:
            name, _, default = ins.value.partition("=")
            args[name.strip()] = default.strip().strip("\"'")
        if ins.keyword == "FROM":
            froms.append(resolve_args(ins.value.split()[0], args))
    assert froms, "no FROM"
    for image in froms:
        assert "$" not in image, f"FROM {image}: give the build argument a default"
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition("/")[2].partition(":")
        assert tag, f"FROM {image}: pin a tag (or a digest)"
        assert tag != "latest", f"FROM {image}: never latest"


def test_the_image_gets_the_projects_ray_version(dockerfile):
    """The README install resolves pyproject's ray pin; nothing else may install another Ray."""
    from packaging.specifiers import SpecifierSet

    import ray
    spec = SpecifierSet(ray_requirement())
    assert str(spec), "pyproject.toml must pin Ray's version"
    assert ray.__version__ in spec, f"the installed Ray {ray.__version__} is not pyproject's {spec}"
    for ins in dockerfile:
        if ins.keyword != "RUN" or "pip install" not in ins.value:
            continue
        derived = re.findall(r"(\w+)=\"?\$\(python3? -c '?\"?import ray; print\(ray\.__version__\)", ins.value)
        for command in shell_commands(ins.value):
            if "pip install" not in command:
                continue
            tokens = shlex.split(command)
            assert not {"-U", "--upgrade"} & set(tokens), f"line {ins.line}: no --upgrade, it could move Ray"
            for token in tokens:
                m = re.fullmatch(r"ray(\[[\w,-]+\])?(.*)", token)
                if not m:
                    continue
                pin = m.group(2)
                assert pin.startswith("=="), f"line {ins.line}: {token} must pin Ray's version"
                version = pin[2:]
                var = re.fullmatch(r"\$\{?(\w+)\}?", version)
                if var:
                    assert var.group(1) in derived, (
                        f"line {ins.line}: {token}: ${var.group(1)} must be read from the installed ray")
                else:
                    assert version in spec, f"line {ins.line}: {token} is not pyproject's {spec}"


def test_no_add_of_urls(dockerfile):
    for ins in dockerfile:
        if ins.keyword == "ADD":
            sources = shlex.split(ins.value)[:-1]
            remote = [s for s in sources if re.match(r"^(https?|ftp|git)://|^git@", s)]
            assert not remote, f"line {ins.line}: ADD of a URL ({remote}); download in a RUN and check it"


def test_apt_get_installs_are_lean_and_clean(dockerfile):
    seen = False
    for ins in dockerfile:
        if ins.keyword != "RUN" or "apt-get" not in ins.value:
            continue
        commands = shell_commands(ins.value)
        installs = [i for i, c in enumerate(commands) if re.search(r"\bapt-get\b.*\binstall\b", c)]
        for i in installs:
            seen = True
            tokens = commands[i].split()
            assert "--no-install-recommends" in tokens, f"line {ins.line}: apt-get install --no-install-recommends"
            assert {"-y", "--yes", "-qy", "-yq"} & set(tokens), f"line {ins.line}: apt-get install -y"
            assert any("apt-get update" in c for c in commands[:i]), f"line {ins.line}: apt-get update in the same RUN"
            assert any(re.search(r"rm -rf /var/lib/apt/lists/\*?", c) for c in commands[i + 1:]), (
                f"line {ins.line}: rm -rf /var/lib/apt/lists/* in the same RUN, after the install")
    assert seen, "the image installs the cluster's system packages with apt-get"


def test_the_image_has_what_ray_cluster_nodes_use(dockerfile):
    runs = " ".join(i.value for i in dockerfile if i.keyword == "RUN")
    apt = " ".join(c for i in dockerfile if i.keyword == "RUN" for c in shell_commands(i.value) if "apt-get" in c)
    # the launcher's autoscaler (in the head's container) sets up workers over ssh and rsync, and
    # copies files in and out of containers with rsync; KubeRay's default probes call wget
    for package in ("openssh-client", "rsync", "wget"):
        assert re.search(rf"\b{package}\b", apt), f"apt-get install {package}"
    # dashboard, job submission, the autoscaler's monitor; the AWS and GCP node providers
    for requirement in ("ray[default]", "boto3", "google-api-python-client"):
        assert requirement in runs, f"pip install {requirement}"
    # the launcher (bash --login) and KubeRay (bash -lc) start Ray in login shells, whose
    # /etc/profile resets PATH: the venv must come back through /etc/profile.d
    assert re.search(r"/app/\.venv/bin.*/etc/profile\.d/\S+\.sh", runs), "put the venv on PATH in /etc/profile.d"


def test_user_env_and_cmd(dockerfile):
    env = env_of(dockerfile)
    assert env.get("RAY_USAGE_STATS_ENABLED") == "0"
    users = [i.value.split(":")[0] for i in dockerfile if i.keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, "run as a non-root user"
    # the launcher mounts ~/... at the HOME of the image's environment (else /root)
    assert env.get("HOME") == f"/home/{users[-1]}"
    cmds = [i for i in dockerfile if i.keyword == "CMD"]
    assert cmds, "a default CMD"
    assert isinstance(json.loads(cmds[-1].value), list), "CMD in exec form"
    # the launcher runs `docker run IMAGE bash` and KubeRay sets the container's command:
    # an ENTRYPOINT would wrap both
    assert not [i for i in dockerfile if i.keyword == "ENTRYPOINT"], "no ENTRYPOINT"


def test_dockerignore_keeps_the_context_small_and_the_copies_in(dockerfile):
    patterns = [l.strip() for l in DOCKERIGNORE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    for must in (".venv", "studies", ".git", "**/__pycache__", ".pytest_cache"):
        assert must in patterns, f".dockerignore: {must}"

    def ignored(path: str) -> bool:
        parts = Path(path).parts
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/")) for p in prefixes
                   for pat in patterns if not pat.startswith("!"))

    for ins in dockerfile:
        if ins.keyword == "COPY" and "from" not in ins.flags:
            for source in shlex.split(ins.value)[:-1]:
                assert (ROOT / source).exists(), f"line {ins.line}: COPY {source}: no such path"
                assert not ignored(source.rstrip("/")), f"line {ins.line}: COPY {source} is excluded by .dockerignore"


# ----------------------------------------------------------------------- (c) deploy configs

@pytest.fixture(scope="module")
def launcher() -> dict[str, dict]:
    return {name: yaml.safe_load(path.read_text()) for name, path in LAUNCHER_CONFIGS.items()}


@pytest.fixture(scope="module")
def raycluster() -> dict:
    docs = [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    assert len(clusters) == 1
    return clusters[0]


def ray_schema() -> dict:
    import ray.autoscaler
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", sorted(LAUNCHER_CONFIGS))
def test_launcher_config_validates_against_rays_schema(launcher, name):
    import jsonschema
    validator = jsonschema.Draft7Validator(ray_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
              for e in validator.iter_errors(launcher[name])]
    assert not errors, f"deploy/{name}.yaml against Ray's ray-schema.json:\n" + "\n".join(errors)


@pytest.mark.parametrize("name", sorted(LAUNCHER_CONFIGS))
def test_launcher_config_passes_rays_own_checks(launcher, name):
    """What `ray up` does before it launches anything: defaults merged in, then validated."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    validate_config(prepare_config(copy.deepcopy(launcher[name])))


@pytest.mark.parametrize("name", sorted(LAUNCHER_CONFIGS))
def test_launcher_node_types(launcher, name):
    config = launcher[name]
    assert config["provider"]["type"] == name and config["provider"].get("region")
    assert config["provider"].get("availability_zone")
    if name == "gcp":
        assert "project_id" in config["provider"]
    assert config["auth"]["ssh_user"]
    assert config["idle_timeout_minutes"] > 0 and config["max_workers"] > 0
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert types[head]["resources"].get("CPU") == 0, "the head offers no CPU to trials"
    workers = {k: v for k, v in types.items() if k != head}
    assert len(workers) >= 2
    for key, node in workers.items():
        assert node.get("min_workers") == 0, f"{key}: scale from zero"
        assert node.get("max_workers", 0) >= 1, f"{key}: max_workers"
    gpu = [k for k, v in workers.items() if v["resources"].get("GPU", 0) >= 1]
    cpu = [k for k, v in workers.items() if not v["resources"].get("GPU") and v["resources"].get("CPU", 0) >= 1]
    assert gpu and cpu, "a CPU worker type and a GPU worker type"
    assert config["docker"]["container_name"]
    # the image carries everything: explicit empty setup (Ray's defaults would run their own), and
    # nothing that installs Ray (another version would break the cluster)
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert key in config, f"set {key} explicitly"
        assert not [c for c in config[key] if re.search(r"pip install.*\bray\b", c)]


@pytest.mark.parametrize("name", sorted(LAUNCHER_CONFIGS))
def test_launcher_start_commands(launcher, name):
    config = launcher[name]
    head = " ; ".join(config["head_start_ray_commands"])
    worker = " ; ".join(config["worker_start_ray_commands"])
    assert config["head_start_ray_commands"][0] == "ray stop" and config["worker_start_ray_commands"][0] == "ray stop"
    for needed in ("ray start --head", "--port=6379", "--autoscaling-config=~/ray_bootstrap_config.yaml",
                   "--dashboard-host=0.0.0.0"):
        assert needed in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        for simple in shell_commands(command):
            if simple.startswith("ray "):
                check_ray_command(shlex.split(simple), f"deploy/{name}.yaml")


def test_one_image_everywhere(launcher, raycluster):
    images = {f"deploy/{n}.yaml": c["docker"]["image"] for n, c in launcher.items()}
    spec = raycluster["spec"]
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    for group, g in groups:
        for container in g["template"]["spec"]["containers"]:
            images[f"kuberay {group}/{container['name']}"] = container["image"]
    assert len(set(images.values())) == 1, f"one image for every node: {images}"
    image = next(iter(images.values()))
    assert "prune-platform" in image
    tag = image.rpartition("/")[2].partition(":")[2]
    assert tag and tag != "latest", f"{image}: a fixed tag, never latest"


def test_placeholders_are_documented():
    docs = DOCS.read_text()
    for path in list(LAUNCHER_CONFIGS.values()) + [KUBERAY]:
        for placeholder in sorted(set(re.findall(r"<[A-Z][A-Z0-9_]*>", path.read_text()))):
            assert f"`{placeholder}`" in docs, f"{path.name}: {placeholder} is not explained in docs/cluster.md"


def test_kuberay_raycluster(raycluster):
    import ray
    from packaging.specifiers import SpecifierSet
    assert raycluster["apiVersion"] == "ray.io/v1"
    spec = raycluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__, "rayVersion must be the image's (the installed) Ray"
    assert spec["rayVersion"] in SpecifierSet(ray_requirement())
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "the head offers no CPU to trials"
    assert head["rayStartParams"].get("dashboard-host") == "0.0.0.0"
    workers = spec["workerGroupSpecs"]
    assert len(workers) >= 2 and len({g["groupName"] for g in workers}) == len(workers)
    for group in [head] + workers:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams values are strings"
        for container in group["template"]["spec"]["containers"]:
            res = container["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    for g in workers:
        assert g["minReplicas"] == 0, f"{g['groupName']}: scale from zero"
        assert g["maxReplicas"] >= 1
        assert g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
    gpu = [g["groupName"] for g in workers
           if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu and len(gpu) < len(workers), "a CPU worker group and a GPU worker group"


# -------------------------------------------------------------------------- (d) the docs' commands

def _ray_cli():
    from ray.scripts.scripts import cli
    return cli


def check_ray_command(tokens: list[str], where: str) -> None:
    """`ray <subcommand> ...`: the subcommand exists, and so does every option before `--`."""
    import click
    command = _ray_cli()
    i = 1
    while isinstance(command, click.Group):
        if i == len(tokens):  # the name of a group (`ray job`), not a command
            return
        assert tokens[i] in command.commands, f"{where}: `ray {' '.join(tokens[1:i + 1])}` does not exist"
        command = command.commands[tokens[i]]
        i += 1
    options = {"--help"} | {o for p in command.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
    for token in tokens[i:]:
        if token == "--" or token in SHELL_OPERATORS:
            break
        if token.startswith("-") and len(token) > 1:
            flag = token.split("=", 1)[0]
            assert flag in options, f"{where}: `{' '.join(tokens[:i])}` has no option {flag}"


def doc_commands(text: str) -> list[str]:
    """Logical lines of the fenced code blocks (continuations joined), and inline code spans."""
    commands: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        commands += [c.strip() for c in re.sub(r"\\\n\s*", " ", block).splitlines() if c.strip()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    commands += [c.strip() for c in re.findall(r"`([^`\n]+)`", prose)]
    return commands


def tokens_after(command: str, marker: str) -> list[str]:
    rest = command.split(marker, 1)[1]
    try:
        tokens = shlex.split(rest, comments=True)
    except ValueError:  # an unbalanced quote: the command sits inside a quoted string
        tokens = shlex.split(re.sub(r"[\"']", " ", rest), comments=True)
    for n, token in enumerate(tokens):
        if token in SHELL_OPERATORS or token.startswith((">", "2>")):
            return tokens[:n]
    return tokens


def test_doc_commands_are_found():
    commands = doc_commands(DOCS.read_text())
    lottery = [c for c in commands if "python -m study.lottery" in c]
    assert len(lottery) >= 5
    needed = ["ray up deploy/aws.yaml", "ray up deploy/gcp.yaml", "kubectl apply -f deploy/kuberay-raycluster.yaml",
              "ray down deploy/aws.yaml", "kubectl delete -f deploy/kuberay-raycluster.yaml", "ray job logs",
              "ray status", "ray dashboard deploy/aws.yaml", "ray attach deploy/aws.yaml", "--address auto",
              "RAY_ADDRESS", "--mlflow-uri http://", "--gpus-per-trial 0.25", "docker build", "docker push",
              "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m study.lottery "
              "--num-samples 64 --storage s3://BUCKET/studies --max-concurrent 16 --cpus-per-trial 1"]
    text = "\n".join(commands)
    missing = [n for n in needed if n not in text]
    assert not missing, f"docs/cluster.md does not show: {missing}"
    for path in set(re.findall(r"\bdeploy/[\w.-]+\.yaml\b", DOCS.read_text())):
        assert (ROOT / path).exists(), f"docs/cluster.md names {path}, which does not exist"


def test_doc_study_commands_use_existing_flags():
    from study.cli import build_parser
    parser = build_parser()
    known = {s for a in parser._actions for s in a.option_strings}
    text = DOCS.read_text()
    paragraphs = re.split(r"\n\s*\n", text)
    marked = {f for f in BEING_ADDED if any(f"`{f}`" in p and "being added" in p.lower() for p in paragraphs)}
    allowed_extra = {f for f in BEING_ADDED if f not in known and f in marked}
    for command in doc_commands(text):
        if "python -m study.lottery" not in command:
            continue
        tokens = tokens_after(command, "python -m study.lottery")
        flags = {t.split("=", 1)[0] for t in tokens if t.startswith("--")}
        unknown = sorted(flags - known - allowed_extra)
        assert not unknown, (f"docs/cluster.md: `python -m study.lottery` has no {unknown} "
                             f"(flags being added must be marked so): {command}")
        if "--help" in tokens or "-h" in tokens:
            continue
        args, skip = [], 0
        for token in tokens:  # drop the flags still being added, then let the parser read the rest
            if skip:
                skip -= 1
            elif token.split("=", 1)[0] in allowed_extra:
                skip = 0 if "=" in token else BEING_ADDED[token.split("=", 1)[0]]
            else:
                args.append(token)
        try:
            parser.parse_args(args)
        except SystemExit as e:  # argparse's error: a missing or malformed value
            pytest.fail(f"docs/cluster.md: `python -m study.lottery {' '.join(args)}` does not parse ({e})")


def test_doc_ray_commands_use_existing_options():
    checked = 0
    for command in doc_commands(DOCS.read_text()):
        try:
            tokens = shlex.split(command, comments=True)
        except ValueError:
            continue
        if len(tokens) >= 2 and tokens[0] == "ray":
            check_ray_command(tokens, "docs/cluster.md")
            checked += 1
    assert checked >= 10
