"""Writes helm/streamscan/values.schema.json (run: python3 helm/tests/gen_schema.py).

The schema is written as Python for comments and reuse; check_chart.py fails when the committed
JSON differs from what this script produces.
"""
import json
import pathlib

S = lambda **kw: {"type": "string", **kw}
I = lambda minimum=None, **kw: {"type": "integer", **({"minimum": minimum} if minimum is not None else {}), **kw}
B = lambda **kw: {"type": "boolean", **kw}
OBJ = {"type": "object"}
# An IPv4 or IPv6 CIDR (the worker parses it; this catches typos at install time).
CIDR = {"type": "string", "pattern": r"^([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)/[0-9]{1,3}$"}
ARR = {"type": "array"}


def obj(props, required=(), **kw):
    out = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = list(required)
    out.update(kw)
    return out


QUANTITY = {"type": ["string", "integer", "number"], "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"}
RESOURCES = obj({
    "requests": {"type": "object", "additionalProperties": QUANTITY},
    "limits": {"type": "object", "additionalProperties": QUANTITY},
})
IMAGE = obj({
    "repository": S(minLength=1, description="image repository, e.g. ghcr.io/org/streamscan-worker"),
    "tag": S(description="image tag; a string: quote numeric tags such as \"1.0\""),
    "digest": S(pattern=r"^(sha256:[a-f0-9]{64})?$", description="optional digest sha256:<64 hex>"),
}, required=["repository"])
SCHED = {
    "nodeSelector": {"type": "object", "additionalProperties": S()},
    "tolerations": ARR,
    "affinity": OBJ,
    "topologySpreadConstraints": ARR,
    "podAnnotations": {"type": "object", "additionalProperties": S()},
    "priorityClassName": S(),
    "extraArgs": {"type": "array", "items": S()},
    "resources": RESOURCES,
}
SECRET_NAME = S(pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$", maxLength=253,
                description="name of a Secret in the release namespace (a DNS subdomain)")
KAFKA_USER = obj({
    "userSecret": SECRET_NAME,
    "sasl": obj({"username": S()}),
})

schema = obj({
    "nameOverride": S(maxLength=30),
    "fullnameOverride": S(maxLength=40),
    "watchNamespace": S(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$", maxLength=63),
    "image": obj({"operator": IMAGE, "worker": IMAGE,
                  "pullPolicy": S(enum=["Always", "IfNotPresent", "Never"])}),
    "imagePullSecrets": ARR,
    "commonLabels": {"type": "object", "additionalProperties": S()},
    "logFormat": S(enum=["auto", "json", "text"]),
    "tracing": obj({"otlpEndpoint": S(pattern=r"^(https?://[^\s]+)?$")}),
    "kafka": obj({
        "bootstrap": S(minLength=1, pattern=r"^[^,\s]+:[0-9]+(,[^,\s]+:[0-9]+)*$",
                       description="required: Kafka bootstrap servers, host:port[,host:port...]"),
        "topic": S(minLength=1, maxLength=249, pattern=r"^[a-zA-Z0-9._-]+$"),
        "securityProtocol": S(enum=["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"]),
        "caSecret": SECRET_NAME,
        "worker": KAFKA_USER,
        "gateway": KAFKA_USER,
        "sasl": obj({"mechanism": S(enum=["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])}),
    }, required=["bootstrap"]),
    "redis": obj({
        "url": S(pattern=r"^(rediss?://[^@\s]+)?$", description="redis://host:port[/db] or rediss://..., without credentials"),
        "urlSecret": SECRET_NAME,
        "urlSecretKey": S(minLength=1),
    }, anyOf=[{"required": ["url"], "properties": {"url": {"minLength": 1}}},
              {"required": ["urlSecret"], "properties": {"urlSecret": {"minLength": 1}}}],
       description="one of redis.url and redis.urlSecret is required"),
    "internalToken": obj({"existingSecret": SECRET_NAME, "generate": B()}),
    "controller": obj({
        "replicas": I(1, description="controller replicas (one leads); at least 1"),
        "leaderElection": B(),
        "leaseName": S(minLength=1),
        "leaseDurationSeconds": I(3),
        "notReadyGraceSeconds": I(0),
        "cancelGraceSeconds": I(0),
        "backoffBaseSeconds": I(1),
        "backoffCapSeconds": I(1),
        "cleanupAttempts": I(1),
        "defaultActiveDeadlineSeconds": I(0, maximum=4294967295, description="deadline of jobs that set none; 0: none"),
        "opsPort": I(1, maximum=65535),
        **SCHED,
    }),
    "gateway": obj({
        "replicas": I(1),
        "port": I(1, maximum=65535),
        "service": obj({"type": S(enum=["ClusterIP", "NodePort", "LoadBalancer"]), "port": I(1, maximum=65535)}),
        "opsPort": I(1, maximum=65535),
        "historyTtlSeconds": I(1),
        "maxUploadBytes": I(1),
        "maxActiveJobsPerUser": I(0, description="unfinished jobs per user; 0: no limit"),
        "maxStreamsPerUser": I(0, description="open event streams per user; 0: no limit"),
        "kafkaFetchWaitMaxMs": I(0, maximum=300000, description="longest time the broker may hold an empty fetch"),
        "kafkaSessionTimeoutMs": I(1000, description="consumer group session timeout"),
        "auth": obj({
            "jwtSecret": {**SECRET_NAME, "minLength": 1},
            "jwtSecretKey": S(minLength=1),
            "jwtAlgorithm": S(enum=["RS256", "ES256", "HS256"]),
            "jwtIssuer": S(minLength=1, pattern=r"\S",
                           description="required: the iss claim every token must carry"),
            "jwtAudience": S(minLength=1, pattern=r"\S",
                             description="required: the aud claim every token must carry"),
        }),
        **SCHED,
    }),
    "worker": obj({
        "replicas": I(1, description="worker pods (servers); at least 1"),
        "maxReplicas": I(0),
        "capacity": I(1, maximum=1000, description="concurrent analyses per server; at least 1"),
        "httpPort": I(1, maximum=65535),
        "modelUrl": S(pattern=r"^(https?://.+)?$"),
        "egress": obj({
            "allowCidrs": {"type": "array", "items": CIDR,
                           "description": "ranges url sources may reach although internal (loopback, private, link-local...)"},
            "allowHosts": {"type": "array", "items": S(minLength=1, pattern=r"^[A-Za-z0-9.-]+$"),
                           "description": "host names url sources may reach whatever they resolve to"},
        }),
        "urlHeadersSecrets": B(description="let url sources send request headers from a Secret labeled streamscan.io/url-headers=true in the jobs' namespace (grants the worker get on Secrets there)"),
        "poolLabels": {"type": "object", "additionalProperties": S()},
        "dataVolume": obj({
            "size": S(pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"),
            "storageClassName": S(),
            "accessModes": {"type": "array", "minItems": 1, "items": S(enum=["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"])},
        }),
        "sourceVolume": obj({"enabled": B(), "claimName": S()},
                            **{"if": {"properties": {"enabled": {"const": True}}},
                               "then": {"properties": {"claimName": {"minLength": 1}}}}),
        "baseMemoryMi": I(32),
        "perJobMemoryMi": I(16),
        "pdb": obj({"enabled": B(), "maxUnavailable": I(1)}),
        "terminationGracePeriodSeconds": I(15, description="at least 15: the worker gets this minus 10 s to stop its jobs and flush events"),
        "selfLabelPolicy": obj({"enabled": B()}),
        **SCHED,
    }),
    "serviceAccount": obj({"create": B(), "annotations": {"type": "object", "additionalProperties": S()}, "automountToken": B()}),
    "jobOwnerPolicy": obj({"enabled": B(), "exemptGroups": {"type": "array", "items": S(minLength=1)}}),
    "networkPolicy": obj({"enabled": B(), "gatewayIngressFrom": ARR, "metricsFrom": ARR,
                          "workerEgress": obj({
                              "enabled": B(),
                              "apiServerCidrs": {"type": "array", "items": CIDR},
                              "apiServerPorts": {"type": "array", "items": I(1, maximum=65535)},
                              "to": ARR})}),
    "metrics": obj({"serviceMonitor": obj({
        "enabled": B(), "interval": S(pattern=r"^[0-9]+(ms|s|m|h)$"),
        "labels": {"type": "object", "additionalProperties": S()}})}),
    "podSecurityContext": OBJ,
    "securityContext": OBJ,
}, required=["kafka", "redis"])
schema["$schema"] = "http://json-schema.org/draft-07/schema#"
schema["title"] = "Streamscan chart values"

# Hardening that must not be switched off by accident.
schema["properties"]["podSecurityContext"] = {
    "type": "object",
    "properties": {"runAsNonRoot": {"const": True, "description": "Streamscan pods run as non-root"}},
}
schema["properties"]["securityContext"] = {
    "type": "object",
    "properties": {
        "readOnlyRootFilesystem": {"const": True, "description": "the images need no writable root filesystem"},
        "allowPrivilegeEscalation": {"const": False},
        "privileged": {"const": False},
    },
}

TEXT = json.dumps(schema, indent=2) + "\n"
PATH = pathlib.Path(__file__).resolve().parents[1] / "streamscan" / "values.schema.json"

if __name__ == "__main__":
    PATH.write_text(TEXT)
    print(f"wrote {PATH}")
