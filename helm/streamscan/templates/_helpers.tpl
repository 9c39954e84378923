{{/* Names, labels and shared snippets of the Streamscan chart. */}}

{{- define "streamscan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamscan.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" . "component" "worker") */}}
{{- define "streamscan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamscan.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "streamscan.labels" -}}
{{ include "streamscan.selectorLabels" . }}
app.kubernetes.io/part-of: streamscan
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Image reference: (dict "ctx" . "image" .Values.image.worker) */}}
{{- define "streamscan.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "streamscan.serviceAccountName" -}}
{{- printf "%s-%s" (include "streamscan.fullname" .ctx) .component -}}
{{- end -}}

{{- define "streamscan.internalTokenSecret" -}}
{{- default (printf "%s-internal-token" (include "streamscan.fullname" .)) .Values.internalToken.existingSecret -}}
{{- end -}}

{{- define "streamscan.workerReplicasMax" -}}
{{- max (int .Values.worker.replicas) (int .Values.worker.maxReplicas) -}}
{{- end -}}

{{/* Kafka client flags shared by worker and gateway (docs/internal-contracts.md):
     (dict "ctx" . "user" .Values.kafka.worker) */}}
{{- define "streamscan.kafkaArgs" -}}
{{- $k := .ctx.Values.kafka -}}
- --kafka-bootstrap={{ $k.bootstrap }}
- --kafka-topic={{ $k.topic }}
- --kafka-security-protocol={{ $k.securityProtocol }}
{{- if $k.caSecret }}
- --kafka-ca-file=/var/run/secrets/streamscan/kafka-ca/ca.crt
{{- end }}
{{- if and .user.userSecret (not .user.sasl.username) }}
- --kafka-cert-file=/var/run/secrets/streamscan/kafka-user/user.crt
- --kafka-key-file=/var/run/secrets/streamscan/kafka-user/user.key
{{- end }}
{{- if .user.sasl.username }}
- --kafka-sasl-mechanism={{ $k.sasl.mechanism }}
- --kafka-username={{ .user.sasl.username }}
- --kafka-password-file=/var/run/secrets/streamscan/kafka-user/password
{{- end }}
{{- end -}}

{{- define "streamscan.kafkaVolumeMounts" -}}
{{- if .ctx.Values.kafka.caSecret }}
- name: kafka-ca
  mountPath: /var/run/secrets/streamscan/kafka-ca
  readOnly: true
{{- end }}
{{- if .user.userSecret }}
- name: kafka-user
  mountPath: /var/run/secrets/streamscan/kafka-user
  readOnly: true
{{- end }}
{{- end -}}

{{- define "streamscan.kafkaVolumes" -}}
{{- if .ctx.Values.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .ctx.Values.kafka.caSecret }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- if .user.userSecret }}
- name: kafka-user
  secret:
    secretName: {{ .user.userSecret }}
    {{- if .user.sasl.username }}
    items:
      - key: password
        path: password
    {{- else }}
    items:
      - key: user.crt
        path: user.crt
      - key: user.key
        path: user.key
    {{- end }}
{{- end }}
{{- end -}}

{{- define "streamscan.tokenVolume" -}}
- name: internal-token
  secret:
    secretName: {{ include "streamscan.internalTokenSecret" . }}
    items:
      - key: token
        path: token
{{- end -}}

{{- define "streamscan.tokenVolumeMount" -}}
- name: internal-token
  mountPath: /var/run/secrets/streamscan/internal-token
  readOnly: true
{{- end -}}

{{- define "streamscan.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- with .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "streamscan.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "streamscan.containerSecurityContext" -}}
{{ toYaml .Values.securityContext }}
{{- end -}}

{{/* Scheduling fields shared by every pod: (dict "ctx" . "c" .Values.worker) */}}
{{- define "streamscan.scheduling" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Namespace of the AnalysisJobs: watchNamespace, else the release namespace. */}}
{{- define "streamscan.jobNamespace" -}}
{{- default .Release.Namespace .Values.watchNamespace -}}
{{- end -}}

{{/* RBAC rules on AnalysisJobs, a Role in the jobs' namespace:
     (dict "ctx" . "component" "worker" "rules" "...") */}}
{{- define "streamscan.jobRbac" -}}
{{- $fullname := include "streamscan.fullname" .ctx -}}
{{- $name := printf "%s-%s-jobs" $fullname .component -}}
{{- $ns := include "streamscan.jobNamespace" .ctx -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}
  namespace: {{ $ns }}
  labels:
    {{- include "streamscan.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
rules:
{{ .rules }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}
  namespace: {{ $ns }}
  labels:
    {{- include "streamscan.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ include "streamscan.serviceAccountName" (dict "ctx" .ctx "component" .component) }}
    namespace: {{ .ctx.Release.Namespace }}
{{- end -}}

{{/* A namespaced Role + RoleBinding in the release namespace: (dict "ctx" . "component" "x" "rules" "...") */}}
{{- define "streamscan.localRbac" -}}
{{- $name := printf "%s-%s" (include "streamscan.fullname" .ctx) .component -}}
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {{ $name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "streamscan.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
rules:
{{ .rules }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {{ $name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "streamscan.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ $name }}
subjects:
  - kind: ServiceAccount
    name: {{ include "streamscan.serviceAccountName" (dict "ctx" .ctx "component" .component) }}
    namespace: {{ .ctx.Release.Namespace }}
{{- end -}}
