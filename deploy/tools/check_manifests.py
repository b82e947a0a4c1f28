#!/usr/bin/env python3
"""Cross-checks rendered kustomize overlays beyond what a schema can say.

    check_manifests.py OVERLAY RENDERED.yaml   (OVERLAY: single or ha)

kubernetes-validate has no schema for the prometheus-operator CRDs (it warns and skips them),
so the ServiceMonitor and PrometheusRule are checked here, together with what ties the objects
to each other and to the relay: selectors match, probes hit /healthz and /readyz on the admin
port, every Secret key the Deployment reads is in secret.example.yaml (and every route of
config.yaml has one), the hardening is in place, and each overlay's topology holds. Needs PyYAML.
"""

import os
import sys

import yaml

DEPLOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BASE = os.path.join(DEPLOY, "kubernetes", "base")
problems: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        problems.append(what)


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    check(len(found) == 1, f"expected exactly one {kind} {name or ''}, found {len(found)}")
    return found[0] if found else {}


def main() -> int:
    overlay, rendered = sys.argv[1], sys.argv[2]
    with open(rendered) as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    with open(os.path.join(BASE, "secret.example.yaml")) as f:
        secret_example = yaml.safe_load(f)
    with open(os.path.join(BASE, "config.yaml")) as f:
        config = yaml.safe_load(f)
    with open(os.path.join(DEPLOY, "prometheus", "alerts.yaml")) as f:
        alerts = yaml.safe_load(f)

    # Every object, the overlay's and the monitoring component's too, carries the name label, so
    # that the runbook's `kubectl get … -l app.kubernetes.io/name=dingtalk-relay` finds it.
    for o in objs:
        labels = o["metadata"].get("labels") or {}
        check(labels.get("app.kubernetes.io/name") == "dingtalk-relay",
              f"{o['kind']} {o['metadata']['name']} lacks app.kubernetes.io/name=dingtalk-relay")

    namespaces = {o["metadata"].get("namespace") for o in objs}
    check(namespaces == {"dingtalk-relay"}, f"objects not all in one namespace: {namespaces}")

    dep = one(objs, "Deployment", "dingtalk-relay")
    svc = one(objs, "Service", "dingtalk-relay")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    pod_labels = pod["metadata"]["labels"]

    # Service and Deployment agree.
    sel = dep["spec"]["selector"]["matchLabels"]
    check(all(pod_labels.get(k) == v for k, v in sel.items()), "Deployment selector misses its pods")
    check(all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
          "Service selector misses the pods")
    cports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(cports == {"http": 8080, "admin": 8081}, f"container ports {cports}")
    sports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    check(sports == {"http": (8080, "http"), "admin": (8081, "admin")}, f"service ports {sports}")

    # Probes on the admin port.
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        got = container.get(probe, {}).get("httpGet", {})
        check(got.get("path") == path and got.get("port") in ("admin", 8081),
              f"{probe} should GET {path} on the admin port, has {got}")

    # Hardening.
    psc, csc = spec.get("securityContext", {}), container.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and isinstance(psc.get("runAsUser"), int)
          and psc["runAsUser"] > 0, "pod must run as a non-root numeric UID")
    check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    check(csc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
          or psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
    res = container.get("resources", {})
    check({"cpu", "memory"} <= set(res.get("requests", {})) and "memory" in res.get("limits", {}),
          f"resources need cpu/memory requests and a memory limit: {res}")

    # Config and volumes.
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    args = container.get("args", [])
    check(args[:1] == ["serve"] and "--config" in args, f"args {args}")
    config_path = args[args.index("--config") + 1] if "--config" in args else ""
    config_dir = os.path.dirname(config_path)
    check(config_dir in mounts, f"--config {config_path} is not on a mounted volume")
    cm_name = volumes.get(mounts.get(config_dir, ""), {}).get("configMap", {}).get("name")
    cm = one(objs, "ConfigMap", cm_name)
    check(os.path.basename(config_path) in cm.get("data", {}),
          f"ConfigMap {cm_name} lacks {os.path.basename(config_path)}")
    check("/tmp" in mounts, "/tmp needs a writable volume (read-only root)")

    # Secrets: every secretKeyRef is in the example; every route has its secret variable.
    env = {e["name"]: e for e in container.get("env", [])}
    example_keys = set(secret_example.get("stringData", {}))
    for name, e in env.items():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            check(ref["name"] == secret_example["metadata"]["name"],
                  f"{name} reads Secret {ref['name']}")
            check(ref["key"] in example_keys, f"{ref['key']} missing from secret.example.yaml")
            check(not ref.get("optional", False), f"{name} must not be optional")
    wanted = {"DINGTALK_RELAY__SERVER__ADMIN_TOKEN"}
    wanted |= {f"DINGTALK_RELAY__DINGTALK__APPS__{a.upper()}__APP_SECRET"
               for a in config["dingtalk"]["apps"]}
    wanted |= {f"DINGTALK_RELAY__ROUTES__{r.upper()}__SECRET" for r, route in config["routes"].items()
               if not route.get("insecure")}
    for key in sorted(wanted):
        check(key in env, f"Deployment does not set {key}")
        check(key in example_keys, f"secret.example.yaml does not name {key}")
    for name, value in (("app_secret", a.get("app_secret")) for a in config["dingtalk"]["apps"].values()):
        check(value is None, f"config.yaml holds a {name}: secrets come from the environment")
    for r, route in config["routes"].items():
        check(route.get("secret") is None, f"config.yaml holds routes.{r}.secret")
    check(config["log"]["format"] == "json", "production config logs json")
    check(config["server"]["listen"].startswith("0.0.0.0:"), "listen on 0.0.0.0")

    # Monitoring (no schema for these CRDs in kubernetes-validate).
    sm = one(objs, "ServiceMonitor", "dingtalk-relay")
    check(sm.get("apiVersion") == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
    sm_sel = sm.get("spec", {}).get("selector", {}).get("matchLabels", {})
    svc_labels = svc["metadata"].get("labels", {})
    check(bool(sm_sel) and all(svc_labels.get(k) == v for k, v in sm_sel.items()),
          f"ServiceMonitor selector {sm_sel} does not match the Service labels {svc_labels}")
    eps = sm.get("spec", {}).get("endpoints", [])
    check(any(e.get("port") == "admin" and e.get("path", "/metrics") == "/metrics" for e in eps),
          f"ServiceMonitor must scrape port admin /metrics: {eps}")
    allowed_sm = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                  "podTargetLabels", "sampleLimit"}
    check(set(sm.get("spec", {})) <= allowed_sm, f"unexpected ServiceMonitor fields {set(sm['spec'])}")
    for e in eps:
        check(set(e) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                         "relabelings", "metricRelabelings", "bearerTokenSecret"},
              f"unexpected ServiceMonitor endpoint fields {set(e)}")
    pr = one(objs, "PrometheusRule", "dingtalk-relay")
    check(pr.get("apiVersion") == "monitoring.coreos.com/v1", "PrometheusRule apiVersion")
    check(pr.get("spec") == {"groups": alerts["groups"]},
          "PrometheusRule spec differs from deploy/prometheus/alerts.yaml "
          "(run deploy/prometheus/render-prometheusrule.sh)")

    # NetworkPolicies: 8080 in, 8081 from monitoring, DNS + 443 out (+5432 for ha).
    nps = [o for o in objs if o["kind"] == "NetworkPolicy"]
    in_ports = {p["port"] for np in nps for r in np["spec"].get("ingress", [])
                for p in r.get("ports", [])}
    out_ports = {p["port"] for np in nps for r in np["spec"].get("egress", [])
                 for p in r.get("ports", [])}
    check({8080, 8081} <= in_ports, f"ingress ports {in_ports}")
    check({53, 443} <= out_ports, f"egress ports {out_ports}")
    for np in nps:
        check(all(pod_labels.get(k) == v for k, v in np["spec"]["podSelector"]["matchLabels"].items()),
              f"NetworkPolicy {np['metadata']['name']} does not select the pods")

    pdb = one(objs, "PodDisruptionBudget", "dingtalk-relay")
    check(all(pod_labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()),
          "PDB selector misses the pods")

    if overlay == "single":
        check(dep["spec"].get("replicas") == 1, "single: replicas 1")
        check(dep["spec"].get("strategy", {}).get("type") == "Recreate", "single: Recreate")
        check(mounts.get("/data") in volumes, "single: /data is mounted")
        claim = volumes.get(mounts.get("/data", ""), {}).get("persistentVolumeClaim", {})
        one(objs, "PersistentVolumeClaim", claim.get("claimName"))
        check(config["store"]["url"] == "sqlite:///data/relay.db", "single: store on /data")
        check("DINGTALK_RELAY__STORE__URL" not in env, "single: store.url stays SQLite")
        check(not [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"], "single: no HPA")
        check(pdb["spec"].get("maxUnavailable") == 1, "single: PDB must not block drains")
    elif overlay == "ha":
        check(dep["spec"].get("replicas", 0) >= 2, "ha: 2+ replicas")
        ru = dep["spec"].get("strategy", {})
        check(ru.get("type") == "RollingUpdate" and ru.get("rollingUpdate", {}).get("maxUnavailable") == 0,
              f"ha: RollingUpdate maxUnavailable 0, has {ru}")
        check("podAntiAffinity" in spec.get("affinity", {}), "ha: pod anti-affinity")
        check("secretKeyRef" in env.get("DINGTALK_RELAY__STORE__URL", {}).get("valueFrom", {}),
              "ha: store.url from the Secret")
        check("/data" not in mounts, "ha: no local store volume")
        hpa = one(objs, "HorizontalPodAutoscaler", "dingtalk-relay")
        check(hpa.get("apiVersion") == "autoscaling/v2", "ha: HPA autoscaling/v2")
        check(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "ha: HPA target")
        check(hpa["spec"]["minReplicas"] >= 2, "ha: HPA minReplicas >= 2")
        check(any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"]["metrics"]),
              "ha: HPA on CPU")
        qps = int(env.get("DINGTALK_RELAY__DINGTALK__MAX_QPS", {}).get("value",
                                                                      config["dingtalk"]["max_qps"]))
        # On PostgreSQL the replicas share one limit (rate_slots): max_qps is the total.
        check(qps <= 20, f"ha: max_qps = {qps} > DingTalk's 20/s")
        check(pdb["spec"].get("minAvailable") == 1 and "maxUnavailable" not in pdb["spec"],
              "ha: PDB minAvailable 1")
        check(5432 in out_ports, "ha: egress 5432")
    else:
        check(False, f"unknown overlay {overlay}")

    for p in problems:
        print(f"FAIL {overlay}: {p}")
    if not problems:
        kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
        print(f"ok {overlay}: {len(objs)} objects cross-checked ({', '.join(kinds)})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
