{{/* Names and labels. */}}
{{- define "fhir-fence.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fhir-fence.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fhir-fence.labels" -}}
{{ include "fhir-fence.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "fhir-fence.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The fhir-fence sidecar container, as deploy/base runs it: a native sidecar (an init container
with restartPolicy Always; put it first among the pod's initContainers), probes on the admin
port (startupProbe /healthz, never /readyz: the FHIR server starts only after the sidecar has,
so a pod waiting on /readyz would wait on itself), the restricted securityContext, the policy
and keys mounted read-only from the volumes "fhir-fence.volumes" defines.
Reusable from another chart that depends on this one:
  initContainers:
    {{- include "fhir-fence.sidecar" (dict "image" "ghcr.io/fhir-fence/fhir-fence:0.1.0") | nindent 4 }}
Keys (all but image optional): image, pullPolicy, logLevel, resources.
tests/deploy/test_helm.py holds it equal to deploy/base's container.
*/}}
{{- define "fhir-fence.sidecar" -}}
- name: fhir-fence
  image: {{ required "the sidecar's image" .image | quote }}
  imagePullPolicy: {{ .pullPolicy | default "IfNotPresent" }}
  restartPolicy: Always
  args: ["serve", "--config", "/etc/fhir-fence/fence.toml"]
  ports:
    - name: fhir
      containerPort: 8080
      protocol: TCP
    - name: admin
      containerPort: 9090
      protocol: TCP
  env:
    - name: FHIR_FENCE_LOG
      value: {{ .logLevel | default "info" | quote }}
  startupProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: 1
    failureThreshold: 30
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    periodSeconds: 10
    timeoutSeconds: 2
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: 5
    timeoutSeconds: 3
    failureThreshold: 2
  resources:
    {{- toYaml (.resources | default (dict "requests" (dict "cpu" "250m" "memory" "64Mi") "limits" (dict "cpu" "1" "memory" "256Mi"))) | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: fhir-fence-config
      mountPath: /etc/fhir-fence
      readOnly: true
    - name: fhir-fence-keys
      mountPath: /var/run/secrets/fhir-fence
      readOnly: true
{{- end -}}

{{/* The sidecar's volumes. Keys: configMap, keysSecret. */}}
{{- define "fhir-fence.volumes" -}}
- name: fhir-fence-config
  configMap:
    name: {{ required "the policy ConfigMap" .configMap | quote }}
- name: fhir-fence-keys
  secret:
    secretName: {{ required "the keys Secret" .keysSecret | quote }}
{{- end -}}
