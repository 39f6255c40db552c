"""Invariants of the Herold Helm chart, asserted on rendered manifests.

Run by `scripts/helm.sh check` (Python's unittest, PyYAML from the check's
venv, Helm from HEROLD_HELM). Each test renders the chart with `helm
template`: the two profiles (helm/herold/profiles/town.yaml and
election.yaml), and variations of them for the guards that must refuse a
render. By hand:

    HEROLD_HELM=$(scripts/helm.sh path) <venv>/bin/python helm/herold/tests/test_manifests.py
"""

import base64
import json
import os
import re
import subprocess
import tempfile
import tomllib
import unittest

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
CHART = os.path.join(ROOT, "helm", "herold")
PROFILES = ("town", "election")
HELM = os.environ.get("HEROLD_HELM", "helm")
KUBE_VERSION = "1.30.0"
RELAY_CONFIG = os.path.join(ROOT, "relay", "src", "config", "args.rs")

# Settings of the relay's config file that the chart writes from its own
# sections (listeners, mounted Secrets, store, router, tracing, drain).
CHART_MANAGED = {
    "listen", "admin_listen", "metrics_listen", "tcp_listen", "tcp_fallback", "data_dir",
    "tls_cert", "tls_key",
    "admin_token_file", "admin_operators_file",
    "admin_tls_cert", "admin_tls_key", "admin_client_ca",
    "drain_grace_secs", "drain_reconnect_spread_ms",
    "cql_contact_points", "cql_keyspace", "cql_consistency", "cql_replication",
    "cql_accept_weak_durability",
    "redis", "redis_prefix", "redis_lease_ms",
    "otlp_endpoint", "trace_sample_ratio",
}
# Settings the chart never writes, on purpose: no development mode in a
# cluster; every pod takes its own node id (<pod-name>-<port>); the image
# carries no web messenger build (docs/web.md: served by another web server
# there, allowed with config.web_origins).
NEVER_SET = {"dev", "node_id", "web_root"}
# Long-running workloads: their containers need the probes.
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}
# Everything that runs containers.
POD_KINDS = WORKLOADS | {"Job", "CronJob"}

FAKE_KEY = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VwBCIEIHeroldFakeKeyMaterialNotARealKey0123456789\n"
    "-----END PRIVATE KEY-----\n"
)
FAKE_CERT = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBHeroldFakeCertificateNotARealOne0123456789abcdefABCDEF\n"
    "-----END CERTIFICATE-----\n"
)
FAKE_TOKEN = "herold-fake-operator-token-0123456789"


def relay_file_settings():
    """The fields of relay/src/config/args.rs's FileConfig: the TOML keys the
    relay accepts (it denies unknown ones)."""
    with open(RELAY_CONFIG) as f:
        source = f.read()
    m = re.search(r"struct FileConfig \{(.*?)\n\}", source, re.S)
    if not m:
        raise AssertionError(f"no `struct FileConfig {{ ... }}` in {RELAY_CONFIG}")
    fields = set(re.findall(r"^\s*(?:pub(?:\([a-z]+\))?\s+)?([a-z_][a-z0-9_]*)\s*:", m.group(1), re.M))
    if len(fields) < 10:
        raise AssertionError(f"only {sorted(fields)} found in FileConfig: has the struct changed shape?")
    return fields


class Render:
    """`helm template` with some values files and --set flags."""

    def __init__(self, *values_files, sets=(), set_files=()):
        args = [HELM, "template", "herold", CHART, "--namespace", "herold",
                "--kube-version", KUBE_VERSION]
        for v in values_files:
            args += ["-f", v]
        for s in sets:
            args += ["--set", s]
        for s in set_files:
            args += ["--set-file", s]
        self.proc = subprocess.run(args, capture_output=True, text=True)
        self.ok = self.proc.returncode == 0
        self.error = self.proc.stderr
        self.text = self.proc.stdout
        self.docs = [d for d in yaml.safe_load_all(self.text) if d] if self.ok else []

    def kinds(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind, name=None):
        found = [d for d in self.kinds(kind) if name is None or d["metadata"]["name"] == name]
        if len(found) != 1:
            raise AssertionError(f"{len(found)} {kind} named {name!r}, want 1")
        return found[0]

    def config_toml(self):
        cm = self.one("ConfigMap", "herold-relay")
        return tomllib.loads(cm["data"]["config.toml"])


def profile(name):
    return os.path.join(CHART, "profiles", f"{name}.yaml")


def pod_specs(r):
    """(kind/name, pod spec) of everything that runs containers."""
    for d in r.docs:
        if d["kind"] in POD_KINDS:
            spec = d["spec"]
            if d["kind"] == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            yield f'{d["kind"]}/{d["metadata"]["name"]}', d["kind"], spec["template"]["spec"]


def containers(r):
    for where, kind, pod in pod_specs(r):
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield f'{where} container {c["name"]}', kind, pod, c


class Rendered(unittest.TestCase):
    """Both profiles render; shared fixtures."""

    renders = {}

    @classmethod
    def setUpClass(cls):
        for p in PROFILES:
            if p not in cls.renders:
                r = Render(profile(p))
                if not r.ok:
                    raise AssertionError(f"profile {p} does not render:\n{r.error}")
                cls.renders[p] = r

    def each(self):
        """(profile, render) of both profiles; messages name the profile."""
        return [(p, self.renders[p]) for p in PROFILES]


class ProbesAndResources(Rendered):
    def test_every_long_running_container_has_health_probes(self):
        for p, r in self.each():
            seen = 0
            for where, kind, pod, c in containers(r):
                if kind not in WORKLOADS:
                    continue
                seen += 1
                ports = {port["name"]: port["containerPort"] for port in c.get("ports", [])}
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    self.assertIn(probe, c, f"{p}: {where} has no {probe}")
                    get = c[probe].get("httpGet")
                    self.assertIsNotNone(get, f"{p}: {where} {probe} is not an HTTP GET")
                    self.assertEqual(get["path"], path, f"{p}: {where} {probe} path")
                    port = ports.get(get["port"], get["port"])
                    self.assertEqual(port, 7302, f"{p}: {where} {probe} is not on the operations port")
            self.assertGreater(seen, 0, f"{p}: no long-running container rendered")

    def test_every_container_has_requests_and_limits(self):
        for p, r in self.each():
            for where, _, _, c in containers(r):
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    for what in ("cpu", "memory"):
                        self.assertIn(what, res.get(part, {}), f"{p}: {where} has no {part}.{what}")

    def test_security_context_is_locked_down(self):
        for p, r in self.each():
            for where, _, pod, c in containers(r):
                sc = c.get("securityContext", {})
                psc = pod.get("securityContext", {})
                self.assertTrue(sc.get("runAsNonRoot") or psc.get("runAsNonRoot"), f"{p}: {where} may run as root")
                self.assertNotEqual(sc.get("runAsUser", psc.get("runAsUser")), 0, f"{p}: {where} runs as uid 0")
                self.assertIs(sc.get("readOnlyRootFilesystem"), True, f"{p}: {where} root filesystem is writable")
                self.assertIs(sc.get("allowPrivilegeEscalation"), False, f"{p}: {where} may escalate")
                self.assertEqual(sc.get("capabilities", {}).get("drop"), ["ALL"], f"{p}: {where} keeps capabilities")
                self.assertFalse(sc.get("capabilities", {}).get("add"), f"{p}: {where} adds capabilities")
                seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
                self.assertEqual(seccomp.get("type"), "RuntimeDefault", f"{p}: {where} seccomp")
                self.assertIs(pod.get("automountServiceAccountToken"), False, f"{p}: {where} mounts an API token")


class Image(Rendered):
    def test_image_is_pinned_to_the_relay_version(self):
        with open(os.path.join(CHART, "Chart.yaml")) as f:
            chart = yaml.safe_load(f)
        with open(os.path.join(ROOT, "Cargo.toml")) as f:
            cargo = tomllib.loads(f.read())
        crate_version = cargo["workspace"]["package"]["version"]
        self.assertEqual(chart["appVersion"], crate_version, "Chart.yaml appVersion is not the relay's crate version")
        for p, r in self.each():
            for where, _, _, c in containers(r):
                image = c["image"]
                name = image.split("@")[0]
                tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
                self.assertNotIn(tag, ("", "latest"), f"{p}: {where} image {image} is not pinned")
                self.assertEqual(tag, crate_version, f"{p}: {where} image tag is not appVersion by default")
                self.assertEqual(c.get("imagePullPolicy"), "IfNotPresent", f"{p}: {where} pull policy")

    def test_latest_is_refused(self):
        r = Render(profile("election"), sets=["image.tag=latest"])
        self.assertFalse(r.ok, "image.tag=latest rendered")
        self.assertIn("/image/tag", r.error)


class Services(Rendered):
    def test_quic_is_a_udp_service_on_7300(self):
        for p, r in self.each():
            udp = [
                (s["metadata"]["name"], port)
                for s in r.kinds("Service")
                for port in s["spec"]["ports"]
                if port.get("protocol") == "UDP" and port["port"] == 7300
            ]
            self.assertEqual(len(udp), 1, f"{p}: {udp}")
            svc = r.one("Service", udp[0][0])
            self.assertEqual(svc["spec"]["type"], "LoadBalancer")
            self.assertEqual(svc["spec"]["externalTrafficPolicy"], "Local")

    def test_the_tcp_fallback_shares_the_quic_port(self):
        for p, r in self.each():
            self.assertEqual(r.config_toml()["tcp_listen"], "0.0.0.0:7300", p)
            tcp = [
                (s["metadata"]["name"], port)
                for s in r.kinds("Service")
                for port in s["spec"]["ports"]
                if port.get("protocol") == "TCP" and port["port"] == 7300
            ]
            self.assertEqual(len(tcp), 1, f"{p}: {tcp}")
            self.assertEqual(tcp[0][1]["targetPort"], "websocket", p)
            ports = {(c["name"], c["protocol"]) for _, _, _, c0 in containers(r)
                     for c in c0.get("ports", [])}
            self.assertIn(("websocket", "TCP"), ports, p)
            np = r.one("NetworkPolicy", "herold-relay")
            ingress = {(port["protocol"], port["port"]): rule for rule in np["spec"]["ingress"] for port in rule["ports"]}
            self.assertNotIn("from", ingress[("TCP", 7300)], f"{p}: the fallback must come from anywhere")

    def test_the_tcp_fallback_can_be_turned_off(self):
        r = Render(profile("town"), sets=("service.quic.tcpFallback=false",))
        self.assertTrue(r.ok, r.error)
        cfg = r.config_toml()
        self.assertNotIn("tcp_listen", cfg)
        self.assertIs(cfg["tcp_fallback"], False)
        self.assertFalse([port for s in r.kinds("Service") for port in s["spec"]["ports"]
                          if port.get("protocol") == "TCP" and port["port"] == 7300])

    def test_admin_and_ops_are_cluster_internal(self):
        for p, r in self.each():
            admin = r.one("Service", "herold-admin")
            ops = r.one("Service", "herold-ops")
            for svc, port in ((admin, 7301), (ops, 7302)):
                self.assertEqual(svc["spec"]["type"], "ClusterIP")
                self.assertEqual([x["port"] for x in svc["spec"]["ports"]], [port])
                self.assertEqual(svc["spec"]["ports"][0]["protocol"], "TCP")


class Config(Rendered):
    def test_config_parses_and_names_only_relay_settings(self):
        known = relay_file_settings()
        for p, r in self.each():
            cfg = r.config_toml()
            unknown = set(cfg) - known
            self.assertFalse(unknown, f"{p}: config.toml sets {sorted(unknown)}, which relay/src/config/args.rs's FileConfig does not know")
            self.assertFalse(set(cfg) & NEVER_SET, f"{p}: config.toml sets {sorted(set(cfg) & NEVER_SET)}")

    def test_every_relay_setting_is_handled_by_the_chart(self):
        # A setting added to (or renamed in) the relay fails here until the
        # chart passes it through (values.schema.json's config), writes it
        # itself (CHART_MANAGED) or leaves it out on purpose (NEVER_SET).
        known = relay_file_settings()
        with open(os.path.join(CHART, "values.schema.json")) as f:
            passthrough = set(json.load(f)["properties"]["config"]["properties"])
        self.assertFalse(passthrough & CHART_MANAGED, "a setting is both passed through and written by the chart")
        handled = passthrough | CHART_MANAGED | NEVER_SET
        self.assertEqual(sorted(known - handled), [], "relay settings the chart does not handle")
        self.assertEqual(sorted(handled - known), [], "chart settings the relay does not have")

    def test_listeners_are_on_the_pod_address(self):
        for p, r in self.each():
            cfg = r.config_toml()
            for key, port in (("listen", 7300), ("admin_listen", 7301), ("metrics_listen", 7302)):
                self.assertEqual(cfg[key], f"0.0.0.0:{port}", f"{p}: {key}")

    def test_files_named_in_the_config_are_mounted(self):
        for p, r in self.each():
            cfg = r.config_toml()
            deploy = r.one("Deployment")
            c = deploy["spec"]["template"]["spec"]["containers"][0]
            mounts = [m["mountPath"] for m in c["volumeMounts"]]
            self.assertIn("--config", c["args"])
            config_path = c["args"][c["args"].index("--config") + 1]
            for key in ("tls_cert", "tls_key", "admin_tls_cert", "admin_tls_key",
                        "admin_client_ca", "admin_operators_file", "admin_token_file"):
                if key in cfg:
                    self.assertTrue(any(cfg[key].startswith(m + "/") for m in mounts),
                                    f"{p}: {key} = {cfg[key]} is on no volume ({mounts})")
            self.assertTrue(any(config_path.startswith(m + "/") for m in mounts), f"{p}: the config file is not mounted")
            self.assertIn(cfg["data_dir"], mounts, f"{p}: data_dir is not a volume")
            self.assertIn("/tmp", mounts)

    def test_admin_api_has_operators_and_tls(self):
        for p, r in self.each():
            cfg = r.config_toml()
            self.assertTrue("admin_operators_file" in cfg or "admin_token_file" in cfg, p)
            self.assertIn("admin_tls_cert", cfg, p)
            self.assertIn("admin_tls_key", cfg, p)

    def test_termination_grace_exceeds_the_drain_grace(self):
        for p, r in self.each():
            drain = r.config_toml()["drain_grace_secs"]
            pod = r.one("Deployment")["spec"]["template"]["spec"]
            self.assertGreater(pod["terminationGracePeriodSeconds"], drain, p)

    def test_termination_grace_follows_the_drain_grace(self):
        r = Render(profile("election"), sets=["drain.graceSeconds=100", "drain.terminationMarginSeconds=7"])
        self.assertTrue(r.ok, r.error)
        self.assertEqual(r.config_toml()["drain_grace_secs"], 100)
        self.assertEqual(r.one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], 107)

    def test_reconnect_spread_is_passed_and_bounded(self):
        r = Render(profile("election"), sets=["drain.reconnectSpreadMs=5000"])
        self.assertTrue(r.ok, r.error)
        self.assertEqual(r.config_toml()["drain_reconnect_spread_ms"], 5000)
        self.assertNotIn("drain_reconnect_spread_ms", self.renders["election"].config_toml())
        r = Render(profile("election"), sets=["drain.reconnectSpreadMs=9000", "drain.graceSeconds=5"])
        self.assertFalse(r.ok)
        self.assertIn("drain.reconnectSpreadMs must be below drain.graceSeconds", r.error)

    def test_numbers_stay_integers_and_floats(self):
        r = Render(profile("election"), sets=["config.max_frame_bytes=8454144", "otlp.sampleRatio=1"])
        self.assertTrue(r.ok, r.error)
        cfg = r.config_toml()
        self.assertIs(type(cfg["max_frame_bytes"]), int)
        self.assertEqual(cfg["max_frame_bytes"], 8454144)
        self.assertIs(type(cfg["trace_sample_ratio"]), float)
        self.assertEqual(cfg["trace_sample_ratio"], 1.0)


class Secrets(Rendered):
    def material(self):
        return [FAKE_KEY.strip(), FAKE_CERT.strip(), FAKE_TOKEN, "PRIVATE KEY", "BEGIN CERTIFICATE"]

    def test_profiles_and_defaults_hold_no_key_material(self):
        for path in [os.path.join(CHART, "values.yaml")] + [profile(p) for p in PROFILES]:
            with open(path) as f:
                text = f.read()
            self.assertNotRegex(text, r"-----BEGIN", path)
            values = yaml.safe_load(text) or {}
            for keys in (("tls", "cert"), ("tls", "key"), ("admin", "tls", "cert"), ("admin", "tls", "key"),
                         ("admin", "tls", "clientCA", "pem"), ("admin", "operators", "toml")):
                v = values
                for k in keys:
                    v = (v or {}).get(k)
                self.assertFalse(v, f"{path}: {'.'.join(keys)} holds material; name a Secret instead")

    def test_profiles_render_no_secret_objects(self):
        for p, r in self.each():
            self.assertEqual(r.kinds("Secret"), [], f"{p}: the profile only references Secrets")
            for m in self.material():
                self.assertNotIn(m, r.text, p)

    def test_inline_material_lands_only_in_secrets(self):
        with tempfile.TemporaryDirectory() as tmp:
            files = {}
            for name, text in (("cert", FAKE_CERT), ("key", FAKE_KEY),
                               ("ops", f'[[operator]]\nname = "ops"\nrole = "org-admin"\ntoken = "{FAKE_TOKEN}"\n')):
                files[name] = os.path.join(tmp, name)
                with open(files[name], "w") as f:
                    f.write(text)
            r = Render(
                profile("election"),
                sets=["tls.existingSecret=", "admin.tls.existingSecret=", "admin.operators.existingSecret=",
                      "admin.tls.clientCA.existingSecret="],
                set_files=[f"tls.cert={files['cert']}", f"tls.key={files['key']}",
                           f"admin.tls.cert={files['cert']}", f"admin.tls.key={files['key']}",
                           f"admin.operators.toml={files['ops']}"],
            )
            self.assertTrue(r.ok, r.error)
        secrets = r.kinds("Secret")
        self.assertEqual(sorted(s["metadata"]["name"] for s in secrets),
                         ["herold-admin-operators", "herold-admin-tls", "herold-tls"])
        decoded = "".join(base64.b64decode(v).decode() for s in secrets for v in s["data"].values())
        self.assertIn(FAKE_KEY, decoded)
        self.assertIn(FAKE_TOKEN, decoded)
        for d in r.docs:
            if d["kind"] == "Secret":
                self.assertNotIn("stringData", d)
                continue
            text = yaml.safe_dump(d)
            for m in self.material():
                self.assertNotIn(m, text, f'{d["kind"]}/{d["metadata"]["name"]} carries material from values')
        cfg = r.config_toml()
        self.assertEqual(cfg["tls_key"], "/etc/herold/tls/tls.key")


class Profiles(Rendered):
    def test_election_has_a_pdb_hpa_and_monitoring(self):
        r = self.renders["election"]
        pdb = r.one("PodDisruptionBudget")
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"],
                         r.one("Deployment")["spec"]["selector"]["matchLabels"])
        hpa = r.one("HorizontalPodAutoscaler")
        self.assertEqual(hpa["apiVersion"], "autoscaling/v2")
        self.assertEqual(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu")
        self.assertNotIn("replicas", r.one("Deployment")["spec"], "the HPA owns the replica count")
        r.one("ServiceMonitor")
        r.one("PrometheusRule")
        r.one("ConfigMap", "herold-dashboard")

    def test_election_uses_scylla_and_redis_sentinel(self):
        cfg = self.renders["election"].config_toml()
        self.assertRegex(cfg["cql_replication"], r"^nts:[A-Za-z0-9_-]+=3$")
        self.assertEqual(cfg["cql_consistency"], "LOCAL_QUORUM")
        self.assertTrue(cfg["redis"].startswith("sentinel://"), cfg["redis"])
        self.assertEqual(self.renders["election"].one("Deployment")["spec"]["strategy"]["type"], "RollingUpdate")

    def test_town_is_one_relay_on_a_volume(self):
        r = self.renders["town"]
        deploy = r.one("Deployment")
        self.assertEqual(deploy["spec"]["replicas"], 1)
        self.assertEqual(deploy["spec"]["strategy"]["type"], "Recreate")
        pvc = r.one("PersistentVolumeClaim")
        volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
        self.assertEqual(volumes["data"]["persistentVolumeClaim"]["claimName"], pvc["metadata"]["name"])
        for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "Job"):
            self.assertEqual(r.kinds(kind), [], f"town renders a {kind}")
        cfg = r.config_toml()
        self.assertFalse([k for k in cfg if k.startswith(("cql_", "redis"))], "town talks to Redis or Scylla")

    def test_town_has_no_pdb(self):
        self.assertEqual(self.renders["town"].kinds("PodDisruptionBudget"), [])


class Migration(Rendered):
    def test_job_migrates_with_the_relays_cql_settings(self):
        r = self.renders["election"]
        job = r.one("Job")
        self.assertEqual(job["metadata"]["annotations"]["helm.sh/hook"], "pre-install,pre-upgrade")
        c = job["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["command"], ["herold-relay"])
        args = dict(a.split("=", 1) for a in c["args"] if "=" in a)
        self.assertIn("--migrate-only", c["args"])
        cfg = r.config_toml()
        for key in ("cql_contact_points", "cql_keyspace", "cql_consistency", "cql_replication"):
            self.assertEqual(args["--" + key.replace("_", "-")], cfg[key], key)
        self.assertEqual(job["spec"]["template"]["spec"]["restartPolicy"], "Never")


class Monitoring(Rendered):
    def test_prometheus_rule_is_the_alerts_file(self):
        with open(os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")) as f:
            alerts = yaml.safe_load(f)
        rule = self.renders["election"].one("PrometheusRule")
        self.assertEqual(rule["spec"], alerts)

    def test_dashboard_is_the_grafana_json(self):
        with open(os.path.join(ROOT, "deploy", "grafana", "herold.json")) as f:
            dashboard = json.load(f)
        cm = self.renders["election"].one("ConfigMap", "herold-dashboard")
        self.assertEqual(cm["metadata"]["labels"].get("grafana_dashboard"), "1")
        self.assertEqual(json.loads(cm["data"]["herold.json"]), dashboard)

    def test_service_monitor_scrapes_as_job_herold_relay(self):
        r = self.renders["election"]
        sm = r.one("ServiceMonitor")
        ep = sm["spec"]["endpoints"][0]
        self.assertEqual(ep["path"], "/metrics")
        self.assertIn({"action": "replace", "targetLabel": "job", "replacement": "herold-relay"}, ep["relabelings"])
        ops = r.one("Service", "herold-ops")
        self.assertTrue(all(ops["metadata"]["labels"].get(k) == v
                            for k, v in sm["spec"]["selector"]["matchLabels"].items()))
        self.assertIn(ep["port"], [p["name"] for p in ops["spec"]["ports"]])


class NetworkPolicy(Rendered):
    def test_ingress_and_egress(self):
        for p, r in self.each():
            np = r.one("NetworkPolicy", "herold-relay")
            ingress = {(port["protocol"], port["port"]): rule for rule in np["spec"]["ingress"] for port in rule["ports"]}
            self.assertNotIn("from", ingress[("UDP", 7300)], f"{p}: QUIC must come from anywhere")
            self.assertTrue(ingress[("TCP", 7301)].get("from"), f"{p}: the admin API is open to all")
            self.assertEqual(ingress[("TCP", 7302)]["from"],
                             [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}])
            egress = {(port["protocol"], port["port"]) for rule in np["spec"]["egress"] for port in rule["ports"]}
            self.assertIn(("UDP", 53), egress)
            if p == "election":
                self.assertLessEqual({("TCP", 9042), ("TCP", 26379), ("TCP", 6379), ("TCP", 4317)}, egress)
            else:
                self.assertEqual(egress, {("UDP", 53), ("TCP", 53)}, "town needs DNS only")


class Documentation(unittest.TestCase):
    def test_every_value_has_a_comment_above_it(self):
        with open(os.path.join(CHART, "values.yaml")) as f:
            lines = f.read().split("\n")
        bare = [
            f"values.yaml:{i + 1}: {line.strip()}"
            for i, line in enumerate(lines)
            if re.match(r"^\s*(-\s+)?[A-Za-z_][\w.-]*:", line) and not lines[i - 1].strip().startswith("#")
        ]
        self.assertEqual(bare, [], "fields without a comment above them")

    def test_every_value_is_in_the_schema(self):
        with open(os.path.join(CHART, "values.yaml")) as f:
            values = yaml.safe_load(f)
        with open(os.path.join(CHART, "values.schema.json")) as f:
            schema = json.load(f)

        def walk(v, s, where):
            if isinstance(v, dict) and s.get("type") == "object" and "properties" in s:
                for k, child in v.items():
                    self.assertIn(k, s["properties"], f"{where}.{k} is not in values.schema.json")
                    walk(child, s["properties"][k], f"{where}.{k}")

        walk(values, schema, "values")


class Guards(unittest.TestCase):
    """Renders the chart must refuse, each with its message."""

    def refused(self, message, *files, sets=()):
        r = Render(*files, sets=sets)
        self.assertFalse(r.ok, f"rendered although it should fail with {message!r}")
        self.assertIn(message, r.error)

    def test_election_without_operators(self):
        self.refused("refuses that without operators: set admin.operators.existingSecret",
                     profile("election"), sets=["admin.operators.existingSecret="])

    def test_election_without_admin_tls(self):
        self.refused("refuses that without TLS", profile("election"),
                     sets=["admin.tls.existingSecret=", "admin.tls.clientCA.existingSecret="])

    def test_without_quic_certificate(self):
        self.refused("tls.existingSecret is required", profile("election"), sets=["tls.existingSecret="])

    def test_defaults_alone_do_not_render(self):
        self.refused("tls.existingSecret is required")

    def test_several_relays_need_redis_and_scylla(self):
        self.refused("needs cql.enabled and redis.enabled", profile("town"),
                     sets=["replicaCount=3", "strategy.type=RollingUpdate", "persistence.enabled=false",
                           "persistence.allowEphemeral=true"])

    def test_redis_needs_scylla(self):
        self.refused("redis.enabled needs cql.enabled", profile("election"), sets=["cql.enabled=false"])

    def test_scylla_needs_replication(self):
        self.refused("cql.enabled needs cql.replication", profile("election"), sets=["cql.replication="])

    def test_embedded_store_needs_recreate(self):
        self.refused("needs strategy.type=Recreate", profile("town"), sets=["strategy.type=RollingUpdate"])

    def test_embedded_store_needs_a_volume(self):
        self.refused("needs persistence.enabled", profile("town"), sets=["persistence.enabled=false"])

    def test_cluster_node_ids_stay_unique(self):
        self.refused("longer than 33 characters", profile("election"),
                     sets=["fullnameOverride=herold-election-weekend-munich-city"])

    def test_schema_rejects_unknown_top_level_keys(self):
        self.refused("additional properties 'replicas' not allowed", profile("town"), sets=["replicas=2"])

    def test_schema_rejects_unknown_relay_settings(self):
        self.refused("additional properties 'max_in_fligth' not allowed", profile("town"),
                     sets=["config.max_in_fligth=7"])

    def test_schema_rejects_wrong_types(self):
        self.refused("got string, want integer", profile("town"), sets=["drain.graceSeconds=soon"])
        self.refused("got string, want boolean", profile("town"), sets=["admin.expose=maybe"])

    def test_schema_rejects_a_bad_replication(self):
        self.refused("/cql/replication", profile("election"), sets=["cql.replication=simple:0"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
