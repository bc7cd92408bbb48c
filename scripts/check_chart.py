"""Lints and renders the chart with each good value set, checks invariants on the result, and
checks that each invalid value set is refused. Writes manifests for kubernetes-validate.

Run by scripts/check-deploy inside its venv (helm-python-sdk), with OUT, CHART, KUBE_VERSIONS
and TOKEN_VAULT_BIN in the environment; not meant to be run on its own."""
import copy
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request

import helm_python as helm
import yaml

CHART = os.environ["CHART"]
OUT = pathlib.Path(os.environ["OUT"])
KUBE_VERSIONS = os.environ["KUBE_VERSIONS"].split()
RELEASE, NAMESPACE = "token-vault", "vault"
CI = pathlib.Path(CHART) / "ci"
failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


def check(cond, msg):
    if not cond:
        fail(msg)
    return cond


def merge(base, over):
    """Helm's `-f a -f b` layering: maps merge, anything else (lists too) replaces. A null is kept,
    so that Helm deletes the key, as it does for a null in a values file."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_values(path):
    text = path.read_text()
    meta = dict(re.findall(r"^# (expect|base): (.*)$", text, re.M))
    return (yaml.safe_load(text) or {}), meta


# The vault's own setting tables (config/defaults.toml), which settings.toml may contain.
DEFAULTS = tomllib.loads(pathlib.Path("config/defaults.toml").read_text())
KNOWN_TABLES = set(DEFAULTS) | {"providers"}

# humantime's units, as far as values.schema.json admits them, in seconds.
DURATION_UNITS = {
    **dict.fromkeys(("nsec", "ns"), 1e-9), **dict.fromkeys(("usec", "us", "µs"), 1e-6),
    **dict.fromkeys(("msec", "ms"), 1e-3), **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), 1),
    **dict.fromkeys(("minutes", "minute", "mins", "min", "m"), 60),
    **dict.fromkeys(("hours", "hour", "hrs", "hr", "h"), 3600),
    **dict.fromkeys(("days", "day", "d"), 86400), **dict.fromkeys(("weeks", "week", "w"), 604800),
}


def seconds(text):
    """A humantime duration ("45s", "1m 30s", "500ms") in seconds; written apart from the chart's
    template parser so that the two check each other."""
    parts = re.findall(r"(\d+)\s*([^\d\s]+)", text)
    if not parts or re.sub(r"\d+\s*[^\d\s]+|\s", "", text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * DURATION_UNITS[u] for n, u in parts)


def url_port(url):
    """The TCP port an http(s) URL connects to."""
    from urllib.parse import urlsplit
    u = urlsplit(url)
    return u.port or (80 if u.scheme == "http" else 443)


def pod_checks(where, pod, volumes_expected):
    """The restricted Pod Security Standard plus this chart's own rules, for any pod template."""
    spec = pod["spec"]
    check(spec.get("enableServiceLinks") is False,
          f"{where}: enableServiceLinks must be false (TOKEN_VAULT_* service-link variables break start-up)")
    check(spec.get("automountServiceAccountToken") is False, f"{where}: must not mount a service account token")
    psc = spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccompProfile RuntimeDefault")
    for c in spec["containers"]:
        sc = c.get("securityContext", {})
        name = f"{where}/{c['name']}"
        check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
        check(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem")
        check(sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot")
        check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}: drop ALL capabilities")
        check(not sc.get("capabilities", {}).get("add"), f"{name}: adds no capabilities")
        env = {e["name"]: e for e in c.get("env", [])}
        db = env.get("TOKEN_VAULT_DATABASE__URL", {})
        check("valueFrom" in db and "value" not in db, f"{name}: database URL only from a Secret reference")
        config = env.get("TOKEN_VAULT_CONFIG", {}).get("value", "")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        check(any(config.startswith(p + "/") for p in mounts), f"{name}: TOKEN_VAULT_CONFIG {config!r} is not under a mount")
        for m in mounts.values():
            check(m.get("readOnly") is True or m["name"] in volumes_expected.get("writable", ()),
                  f"{name}: mount {m['name']} should be read-only")
    names = {v["name"] for v in spec.get("volumes", [])}
    for v in volumes_expected["required"]:
        check(v in names, f"{where}: volume {v} missing")
    for v in volumes_expected.get("forbidden", ()):
        check(v not in names, f"{where}: volume {v} must not be mounted here")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_set(name, values, docs):
    """Invariants of one rendered value set. `docs` maps kind -> list of objects."""
    merged = CHART_OBJ.merge_values(values)
    for kind, objs in docs.items():
        for o in objs:
            meta = o["metadata"]
            check(meta.get("namespace") == NAMESPACE, f"{name}: {kind}/{meta['name']} has no namespace {NAMESPACE}")
            check(len(meta["name"]) <= 63, f"{name}: {kind}/{meta['name']} name longer than 63")
    check("Secret" not in docs, f"{name}: the chart must not render Secrets (secrets by reference only)")

    (deploy,) = docs["Deployment"]
    pod = deploy["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    check(selects(deploy["spec"]["selector"]["matchLabels"], pod_labels), f"{name}: Deployment selector misses its pods")
    check(deploy["spec"]["strategy"]["type"] == "RollingUpdate", f"{name}: RollingUpdate strategy")
    check(bool(pod["spec"].get("topologySpreadConstraints")), f"{name}: topologySpreadConstraints")
    for t in pod["spec"].get("topologySpreadConstraints", []):
        check(selects(t["labelSelector"]["matchLabels"], pod_labels), f"{name}: spread constraint selects other pods")
    writable = {m["name"] for m in merged.get("extraVolumeMounts", [])}
    pod_checks(f"{name}: Deployment", pod, {"required": ["settings", "keyring", "provider-secrets"], "writable": writable})
    (server,) = [c for c in pod["spec"]["containers"] if c["name"] == "token-vault"]
    check(server.get("args") == ["serve"], f"{name}: the server runs `serve`")
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    check(ports.get("grpc") == merged["grpc"]["port"], f"{name}: container port grpc")
    tls_on = merged["tls"]["enabled"]
    # kubelet's gRPC probes speak no TLS: with TLS on they must use the plaintext health port.
    probe_port, probe_name = (ports.get("health"), "health") if tls_on else (ports.get("grpc"), "grpc")
    if tls_on:
        check(ports.get("health") == merged["tls"]["healthPort"], f"{name}: with TLS, container port health")
    else:
        check("health" not in ports, f"{name}: without TLS, no health port (health is on grpc)")
    probes = ["startupProbe", "readinessProbe"] + (["livenessProbe"] if merged["probes"]["liveness"]["mode"] == "grpc" else [])
    for probe in probes:
        check(server.get(probe, {}).get("grpc", {}).get("port") == probe_port,
              f"{name}: {probe} must be a native gRPC probe on the {probe_name} port")
    env = {e["name"]: e for e in server.get("env", [])}
    migrate_env = env.get("TOKEN_VAULT_DATABASE__MIGRATE_ON_START", {}).get("value")
    jobs = docs.get("Job", [])
    if merged["migrations"]["enabled"]:
        check(migrate_env == "false", f"{name}: with the migration Job, pods must set MIGRATE_ON_START=false")
        check(len(jobs) == 1, f"{name}: one migration Job")
        for job in jobs:
            hooks = job["metadata"]["annotations"].get("helm.sh/hook", "")
            check(set(hooks.split(",")) == {"pre-install", "pre-upgrade"}, f"{name}: Job hook is {hooks!r}")
            jpod = job["spec"]["template"]
            check(jpod["spec"]["containers"][0].get("args") == ["migrate"], f"{name}: the Job runs `migrate`")
            check(not selects(deploy["spec"]["selector"]["matchLabels"], jpod["metadata"]["labels"]),
                  f"{name}: the Deployment selector must not match migration pods")
            pod_checks(f"{name}: Job", jpod, {"required": ["settings", "provider-secrets"], "forbidden": ["keyring"]})
            cm = jpod["spec"]["volumes"][0]["configMap"]["name"]
            hook_cms = [c for c in docs["ConfigMap"] if c["metadata"]["name"] == cm]
            check(len(hook_cms) == 1 and "helm.sh/hook" in hook_cms[0]["metadata"].get("annotations", {}),
                  f"{name}: the Job's settings must come from a hook ConfigMap (it runs before the release's own)")
    else:
        check(migrate_env is None, f"{name}: without the Job, pods migrate on start (no MIGRATE_ON_START override)")
        check(not jobs, f"{name}: no migration Job")

    # settings.toml: parses, has only the vault's tables, and the copies agree.
    tomls = {c["metadata"]["name"]: c["data"]["settings.toml"] for c in docs["ConfigMap"] if "settings.toml" in c["data"]}
    check(len(set(tomls.values())) == 1, f"{name}: the hook ConfigMap's settings.toml differs from the server's")
    settings = {}
    try:
        settings = tomllib.loads(next(iter(tomls.values())))
    except tomllib.TOMLDecodeError as e:
        fail(f"{name}: settings.toml does not parse: {e}")
    check(set(settings) <= KNOWN_TABLES | {"mode"}, f"{name}: unknown settings tables {set(settings) - KNOWN_TABLES}")
    check(settings.get("mode") == "production", f"{name}: mode must be production")
    check("url" not in settings.get("database", {}), f"{name}: database.url must not be in the ConfigMap")
    check(set(settings.get("providers", {})) == {p["name"] for p in merged["providers"]}, f"{name}: providers")
    for pname, p in settings.get("providers", {}).items():
        by_file = ("client_secret_file" in p) != ("client_secret_files" in p)
        check("client_secret" not in p and by_file, f"{name}: provider {pname} secret by file only")
    # [auth]: enforced, with callers that each have an identity, token hashes only; [tls] files
    # under the mounted Secret, plus the plaintext health listener the probes use.
    auth = settings.get("auth", {})
    callers = auth.get("callers", [])
    check(auth.get("mode", "enforce") == "enforce" and callers, f"{name}: every valid set must configure a caller (auth.mode enforce)")
    check("policy_file" not in auth, f"{name}: callers are inline (no policy file is mounted)")
    for c in callers:
        ids = c.get("mtls_uris", []) + c.get("mtls_dns_names", []) + c.get("bearer_token_sha256", [])
        check(bool(ids), f"{name}: caller {c.get('name')} has no identity")
        for h in c.get("bearer_token_sha256", []):
            check(re.fullmatch(r"[0-9a-fA-F]{64}", h) is not None, f"{name}: caller {c['name']}: {h!r} is not a hex SHA-256")
        for key in ("rpcs", "providers", "tenants"):
            check(isinstance(c.get(key), list), f"{name}: caller {c.get('name')} needs {key} (the vault requires it)")
    tls = settings.get("tls", {})
    if tls_on:
        mount = merged["tls"]["mountPath"]
        for key in ("cert_file", "key_file") + (("client_ca_file",) if merged["tls"]["clientCaKey"] else ()):
            check(tls.get(key, "").startswith(mount + "/"), f"{name}: tls.{key} must be under {mount}")
        check(tls.get("plaintext_health_listen", "").endswith(f":{merged['tls']['healthPort']}"),
              f"{name}: tls.plaintext_health_listen must be on tls.healthPort")
    else:
        check(not tls, f"{name}: without tls.enabled, settings.toml must have no [tls]")
    for key, kind in [("database.max_connections", int), ("vault.cache_max_entries", int),
                      ("refresh.max_attempts", int), ("vault.max_margin_fraction", (int, float))]:
        table, field = key.split(".")
        if field in settings.get(table, {}):
            check(isinstance(settings[table][field], kind) and not isinstance(settings[table][field], bool),
                  f"{name}: {key} must be a TOML {kind}")

    (svc,) = docs["Service"]
    sports = {p["name"]: p for p in svc["spec"]["ports"]}
    check(sports.get("grpc", {}).get("appProtocol") == merged["service"]["appProtocol"], f"{name}: Service port grpc/appProtocol")
    check(sports.get("grpc", {}).get("targetPort") == "grpc", f"{name}: Service targets the grpc port by name")
    check(selects(svc["spec"]["selector"], pod_labels), f"{name}: Service selector misses the pods")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for o in docs.get(kind, []):
            sel = o["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]["matchLabels"]
            check(selects(sel, pod_labels), f"{name}: {kind} selector misses the pods")
    # Termination: SIGKILL must not come before the vault has stopped on its own, i.e. the preStop
    # sleep + max(shutdown_grace, lease_ttl) (calls and refreshes drain together) + 5 s for the
    # audit writer. Unset settings are the binary's defaults, read from config/defaults.toml.
    pre_stop = server.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    shutdown_grace = settings.get("server", {}).get("shutdown_grace", DEFAULTS["server"]["shutdown_grace"])
    lease_ttl = settings.get("refresh", {}).get("lease_ttl", DEFAULTS["refresh"]["lease_ttl"])
    try:
        needed = pre_stop + max(seconds(shutdown_grace), seconds(lease_ttl)) + 5
        period = pod["spec"].get("terminationGracePeriodSeconds", 30)
        check(period >= needed, f"{name}: terminationGracePeriodSeconds {period} < preStop {pre_stop} s + "
              f"max(shutdown_grace {shutdown_grace}, lease_ttl {lease_ttl}) + 5 s = {needed} s")
    except (ValueError, KeyError) as e:
        fail(f"{name}: shutdown settings: {e}")

    # NetworkPolicy: on unless switched off; the gRPC port never open to every source; the probes'
    # health port admitted; egress (when restricted) reaching DNS, Postgres, every provider's
    # token endpoint and the collector.
    nps = docs.get("NetworkPolicy", [])
    check(len(nps) == (1 if merged["networkPolicy"]["enabled"] else 0), f"{name}: NetworkPolicy count {len(nps)}")
    for np in nps:
        ingress = np["spec"].get("ingress", [])
        allowed = {pt["port"] for rule in ingress for pt in rule.get("ports", [])}
        check(not tls_on or "health" in allowed, f"{name}: the NetworkPolicy must admit the probes' health port")
        for rule in ingress:
            ports = {pt["port"] for pt in rule.get("ports", [])}
            check(bool(rule.get("from")) or ports <= {"health"},
                  f"{name}: a NetworkPolicy ingress rule opens {sorted(map(str, ports))} to every source")
            check(bool(rule.get("ports")), f"{name}: a NetworkPolicy ingress rule admits every port")
        egress_cfg = merged["networkPolicy"]["egress"]
        if not egress_cfg["enabled"]:
            check("Egress" not in np["spec"]["policyTypes"], f"{name}: egress restricted although egress.enabled is false")
            continue
        reachable = {(pt.get("protocol", "TCP"), pt["port"]) for rule in np["spec"].get("egress", []) for pt in rule.get("ports", [])}
        wanted = {("TCP", p) for p in egress_cfg["database"]["ports"]}
        wanted |= {("TCP", url_port(p["token_endpoint"])) for p in merged["providers"] if "token_endpoint" in p}
        wanted |= {("TCP", p) for p in egress_cfg["providers"]["ports"]}
        if settings.get("telemetry", {}).get("otlp_endpoint"):
            wanted.add(("TCP", url_port(settings["telemetry"]["otlp_endpoint"])))
        if egress_cfg["allowDns"]:
            wanted |= {("UDP", 53), ("TCP", 53)}
        check(wanted <= reachable, f"{name}: the NetworkPolicy's egress misses {sorted(wanted - reachable)}")
    for hpa in docs.get("HorizontalPodAutoscaler", []):
        check(hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"], f"{name}: HPA target")
        check("replicas" not in deploy["spec"], f"{name}: with an HPA the Deployment must not set replicas")
    for sm in docs.get("ServiceMonitor", []):
        check(selects(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]), f"{name}: ServiceMonitor selector misses the Service")
        for ep in sm["spec"]["endpoints"]:
            check(ep["port"] in sports, f"{name}: ServiceMonitor port {ep['port']} is not a Service port")
    # Prometheus: with metrics.enabled the vault serves /metrics on the container's `metrics` port
    # (telemetry.metrics_listen), the Service exposes it, and the ServiceMonitor scrapes it there.
    metrics_on = merged["metrics"]["enabled"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    listen = settings.get("telemetry", {}).get("metrics_listen", "")
    if metrics_on:
        check(ports.get("metrics") == merged["metrics"]["port"], f"{name}: container port metrics")
        check(listen.endswith(f":{merged['metrics']['port']}"), f"{name}: telemetry.metrics_listen must be on metrics.port, not {listen!r}")
        check(sports.get("metrics", {}).get("targetPort") == "metrics", f"{name}: the Service exposes the metrics port")
    else:
        check(not listen and "metrics" not in ports and "metrics" not in sports, f"{name}: without metrics.enabled, no metrics port or listener")
    for sm in docs.get("ServiceMonitor", []):
        for ep in sm["spec"]["endpoints"]:
            check(ep["port"] == "metrics" and ep.get("path") == "/metrics", f"{name}: the ServiceMonitor scrapes metrics:/metrics")
    for np in nps:
        if metrics_on and merged["networkPolicy"]["ingress"]["metricsFrom"]:
            check(any("metrics" in {pt["port"] for pt in r.get("ports", [])} and r.get("from") == merged["networkPolicy"]["ingress"]["metricsFrom"]
                      for r in np["spec"].get("ingress", [])), f"{name}: the NetworkPolicy admits metricsFrom to the metrics port")
    # The Grafana dashboard: the chart's JSON, verbatim, labelled for the sidecar.
    dashboards = [c for c in docs.get("ConfigMap", []) if "token-vault.json" in c["data"]]
    check(len(dashboards) == (1 if merged["dashboard"]["enabled"] else 0), f"{name}: dashboard ConfigMap count {len(dashboards)}")
    for cm in dashboards:
        shipped = (pathlib.Path(CHART) / "dashboards/token-vault.json").read_text()
        check(json.loads(cm["data"]["token-vault.json"]) == json.loads(shipped), f"{name}: the dashboard ConfigMap carries dashboards/token-vault.json")
        check(selects(merged["dashboard"]["labels"], cm["metadata"]["labels"]), f"{name}: the dashboard ConfigMap lacks the sidecar's labels")
    if merged["tls"]["enabled"]:
        mounts = {m["name"]: m for m in server["volumeMounts"]}
        check("tls" in mounts and mounts["tls"]["mountPath"] == merged["tls"]["mountPath"], f"{name}: TLS material mounted")
    return settings


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificates(directory, files):
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, with openssl,
    written where settings.toml expects them (`files`: setting name -> path)."""
    directory.mkdir(parents=True, exist_ok=True)
    work = directory / ".ca"
    work.mkdir()

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=work)

    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
        "-subj", "/CN=check-deploy CA", "-keyout", "ca.key", "-out", "ca.crt")
    for who, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                     ("client", "subjectAltName=URI:spiffe://cluster.local/ns/billing/sa/billing\nextendedKeyUsage=clientAuth")):
        (work / f"{who}.ext").write_text(ext + "\n")
        ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={who}",
            "-keyout", f"{who}.key", "-out", f"{who}.csr")
        ssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", f"{who}.ext", "-out", f"{who}.crt")
    for setting, source in (("cert_file", "server.crt"), ("key_file", "server.key"), ("client_ca_file", "ca.crt")):
        if setting in files:
            target = pathlib.Path(files[setting])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(work / source, target)
    return work


def tls_handshake(port, work, mutual):
    """A TLS (and, with a client CA, mutual TLS) handshake with the vault's gRPC port, offering
    h2 as gRPC clients do; returns the negotiated ALPN protocol."""
    import ssl
    ctx = ssl.create_default_context(cafile=str(work / "ca.crt"))
    ctx.set_alpn_protocols(["h2"])
    if mutual:
        ctx.load_cert_chain(str(work / "client.crt"), str(work / "client.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.selected_alpn_protocol()


def run_binary(binary, name, settings_text, providers):
    """Starts the real binary with this settings.toml and the chart's file layout (paths moved
    into a temporary directory): it must accept the callers and TLS files, load the keyring, read
    every client secret, bind, and answer health checks NOT_SERVING (the database is deliberately
    unreachable) on the port the probes use."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"check-deploy-{name}-"))
    try:
        port = free_port()
        text = settings_text.replace("/etc/token-vault/", f"{tmp}/")
        text = re.sub(r'(?m)^listen = .*$', f'listen = "127.0.0.1:{port}"', text)
        tls = tomllib.loads(text).get("tls", {})
        metrics_port = None
        if tomllib.loads(text).get("telemetry", {}).get("metrics_listen"):
            metrics_port = free_port()
            text = re.sub(r'(?m)^metrics_listen = .*$', f'metrics_listen = "127.0.0.1:{metrics_port}"', text)
        health_port, work = port, None
        if tls:
            health_port = free_port()
            text = re.sub(r'(?m)^plaintext_health_listen = .*$', f'plaintext_health_listen = "127.0.0.1:{health_port}"', text)
            work = make_certificates(tmp, tls)
        (tmp / "config").mkdir()
        (tmp / "config/settings.toml").write_text(text)
        for p in providers:
            (tmp / "providers" / p).mkdir(parents=True)
            (tmp / "providers" / p / "client-secret").write_text("check-deploy-not-a-secret\n")
            # Read only where the provider has `client_secret.nextKey` (client_secret_files).
            (tmp / "providers" / p / "client-secret-next").write_text("check-deploy-next-not-a-secret\n")
        (tmp / "keyring").mkdir()
        keys = [subprocess.run([binary, "keys", "generate", "--id", k], check=True, capture_output=True, text=True).stdout
                for k in ("2026-11", "check-2")]
        (tmp / "keyring/keyring").write_text("".join(keys))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "TOKEN_VAULT_CONFIG": str(tmp / "config/settings.toml"),
               # Nothing listens on port 9: connections are refused at once.
               "TOKEN_VAULT_DATABASE__URL": "postgres://check@127.0.0.1:9/none",
               "TOKEN_VAULT_DATABASE__MIGRATE_ON_START": "false",
               "TOKEN_VAULT_DATABASE__ACQUIRE_TIMEOUT": "1s"}
        log = open(tmp / "serve.log", "w+")
        proc = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", health_port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            if proc.poll() is not None or time.monotonic() >= deadline:
                log.seek(0)
                return fail(f"{name}: token-vault serve did not start with the rendered settings:\n{log.read()[-2000:]}")
            # The first database ping ends after acquire_timeout (1s here); until then the
            # server reports SERVING, so poll for the NOT_SERVING a readiness probe would see.
            deadline = time.monotonic() + 10
            while True:
                hc = subprocess.run([binary, "healthcheck", "--addr", f"http://127.0.0.1:{health_port}"],
                                    capture_output=True, text=True, timeout=10)
                if (hc.returncode == 1 and "connecting" not in hc.stderr) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            before = len(failures)
            check(hc.returncode == 1 and "connecting" not in hc.stderr,
                  f"{name}: with the database down, health must answer NOT_SERVING on port {'health' if tls else 'grpc'} (rc={hc.returncode} {hc.stderr.strip()})")
            if tls:
                try:
                    alpn = tls_handshake(port, work, "client_ca_file" in tls)
                    check(alpn == "h2", f"{name}: the TLS listener negotiated {alpn!r}, not h2")
                except (OSError, ValueError) as e:
                    fail(f"{name}: TLS handshake with the gRPC port failed: {e}")
            if metrics_port:
                # A scrape, as Prometheus makes it: the text format, the vault's instruments.
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                        body, ctype = r.read().decode(), r.headers.get("Content-Type", "")
                    check(ctype.startswith("text/plain; version=0.0.4") and "# TYPE tokenvault_refreshes_total counter" in body,
                          f"{name}: GET /metrics did not answer the vault's metrics in the text format ({ctype}): {body[:300]}")
                except OSError as e:
                    fail(f"{name}: GET /metrics on the metrics port failed: {e}")
            proc.send_signal(signal.SIGTERM)
            check(proc.wait(timeout=30) == 0, f"{name}: token-vault serve did not stop cleanly on SIGTERM")
            # The vault's own account of its callers (startup.rs, log_security_posture).
            log.seek(0)
            served = log.read()
            want = len(tomllib.loads(text)["auth"].get("callers", []))
            posture = re.search(r'callers["=:\s]+(\d+).*callers are authenticated|callers are authenticated.*callers["=:\s]+(\d+)', served)
            check(posture is not None and want in {int(g) for g in posture.groups() if g},
                  f"{name}: the vault did not log {want} authenticated callers:\n{served[-1500:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # The migration Job's pod has no keyring mounted: `migrate` must get past configuration
        # without it and fail only on the (unreachable) database.
        # Nor the TLS Secret: the Job does not mount it.
        shutil.rmtree(tmp / "keyring")
        for f in tls.values():
            if isinstance(f, str) and f.startswith(str(tmp)):
                pathlib.Path(f).unlink(missing_ok=True)
        mig = subprocess.run([binary, "migrate"], env=env, capture_output=True, text=True, timeout=60)
        check(mig.returncode != 0 and "configuration" not in mig.stderr and "keyring" not in mig.stderr,
              f"{name}: `migrate` must accept the settings without a keyring or TLS files: {mig.stderr.strip()[-500:]}")
        if len(failures) == before:
            how = (f"TLS{' + client certificate' if 'client_ca_file' in tls else ''} handshake ok, health NOT_SERVING on the plaintext probe port"
                   if tls else "plaintext, health NOT_SERVING") + (", /metrics scraped" if metrics_port else "")
            print(f"  ok   {name}: token-vault serve started with {len(tomllib.loads(text)['auth'].get('callers', []))} caller(s) ({how}, no database), "
                  "stopped on SIGTERM; migrate needs no keyring or TLS files")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


good = sorted(CI.glob("*-values.yaml"))
bad = sorted((CI / "invalid").glob("*.yaml"))
if not good or not bad:
    sys.exit("no value sets found under ci/")
minimal, _ = read_values(CI / "minimal-values.yaml")
# The newer of the release and debug builds: a stale one would test settings of an older vault.
binary = os.environ.get("TOKEN_VAULT_BIN") or max(
    (p for p in ("target/release/token-vault", "target/debug/token-vault") if os.access(p, os.X_OK)),
    key=os.path.getmtime, default="")
if binary == "none":
    binary = ""
elif binary and not os.access(binary, os.X_OK):
    sys.exit(f"TOKEN_VAULT_BIN={binary} is not an executable")
elif binary:
    age = time.time() - os.path.getmtime(binary)
    print(f"- binary check uses {binary} (built {age / 60:.0f} min ago; rebuild it if src/ changed since)")

stats = {"sets": 0, "manifests": 0, "refused": 0, "binary": "skipped (no binary)"}
CHART_OBJ = helm.Chart.load(CHART)
kinds_seen = set()
for path in good:
    name = path.name.removesuffix("-values.yaml")
    values, _ = read_values(path)
    print(f"- {path}")
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSIONS[0]}")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    for m in problems:
        fail(f"{name}: helm lint: {m.get('path', '')} {m['error'].strip()}")
    if not problems:
        print(f"  ok   helm lint --strict (info: {', '.join(m['error'] for m in report['messages']) or 'none'})")
    try:
        rendered = CHART_OBJ.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        upgrade_notes = CHART_OBJ.render(values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
    except helm.HelmError as e:
        fail(f"{name}: render failed: {e}")
        continue
    outdir = OUT / "rendered" / name
    outdir.mkdir(parents=True)
    docs = {}
    for tpl, text in sorted(rendered.items()):
        base = pathlib.Path(tpl).name
        if base == "NOTES.txt":
            (OUT / f"NOTES-{name}.txt").write_text(text)
            check("port-forward" in text and "port-forward" in upgrade_notes[tpl], f"{name}: NOTES.txt")
            continue
        objs = [d for d in yaml.safe_load_all(text) if d]
        if objs:
            (outdir / base).write_text(text)
        for o in objs:
            docs.setdefault(o["kind"], []).append(o)
            stats["manifests"] += 1
    kinds_seen |= set(docs)
    if name == "minimal":
        check("NetworkPolicy" in docs, "minimal: the chart's defaults must create a NetworkPolicy")
    settings = check_set(name, values, docs)
    print(f"  ok   rendered {sum(map(len, docs.values()))} objects: {', '.join(sorted(docs))}")
    if binary and settings:
        cm = next(c["data"]["settings.toml"] for c in docs["ConfigMap"] if "settings.toml" in c["data"])
        run_binary(binary, name, cm, [p["name"] for p in CHART_OBJ.merge_values(values)["providers"]])
    stats["sets"] += 1

# Every optional object must have been rendered by some value set, or its template went unchecked.
for kind in ("Deployment", "Service", "ServiceAccount", "ConfigMap", "Job", "PodDisruptionBudget",
             "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor"):
    check(kind in kinds_seen, f"no value set renders a {kind}")

print("- invalid value sets (each must be refused)")
for path in bad:
    over, meta = read_values(path)
    values = over if meta.get("base") == "none" else merge(minimal, over)
    expect = meta.get("expect")
    if not check(bool(expect), f"{path}: no '# expect:' line"):
        continue
    try:
        CHART_OBJ.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        fail(f"{path.name}: rendered, but must be refused")
    except helm.HelmError as e:
        msg = " ".join(str(e).split())
        if check(expect in msg, f"{path.name}: refused, but not for the expected reason {expect!r}: {msg[:300]}"):
            stats["refused"] += 1
            print(f"  ok   {path.name}: {msg[:140]}")

# README.md must document every value the schema accepts.
def schema_paths(node, path=""):
    items = node.get("items")
    if node.get("type") == "array" and isinstance(items, dict) and "properties" in items:
        yield path
        yield from schema_paths(items, path + "[]")
    elif "properties" in node:
        for key, sub in node["properties"].items():
            yield from schema_paths(sub, f"{path}.{key}" if path else key)
    else:
        yield path


readme = (pathlib.Path(CHART) / "README.md").read_text()
undocumented = [p for p in schema_paths(CHART_OBJ.schema) if f"| `{p}` |" not in readme]
if check(not undocumented, f"README.md does not document: {', '.join(undocumented)}"):
    print(f"- README.md documents all {len(list(schema_paths(CHART_OBJ.schema)))} values of values.schema.json")

# The packaged chart must install the same files minus ci/ (.helmignore).
pkg = pathlib.Path(helm.package(CHART, destination=str(OUT)))
import tarfile
with tarfile.open(pkg) as tar:
    members = tar.getnames()
check(not any("/ci/" in m for m in members), "the packaged chart must leave out ci/")
check(any(m.endswith("values.schema.json") for m in members), "the packaged chart must carry values.schema.json")
print(f"- packaged {pkg.name} ({len(members)} files)")

if binary:
    stats["binary"] = f"{stats['sets']} sets started with {binary}" if not failures else "see failures"
(OUT / "summary.env").write_text("".join(f"{k}={v!r}\n" for k, v in
                                         [("SETS", stats["sets"]), ("OBJECTS", stats["manifests"]),
                                          ("REFUSED", f"{stats['refused']}/{len(bad)}"), ("BINARY", stats["binary"])]))
if not binary:
    print("- binary check skipped: no token-vault binary (build one, or set TOKEN_VAULT_BIN)")
if failures:
    print(f"\n{len(failures)} chart check(s) failed")
    sys.exit(1)
