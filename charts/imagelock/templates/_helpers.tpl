{{/* Names, labels, paths and the checks every template shares. */}}

{{- define "imagelock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name; kept to 52 characters so suffixes like -webhook-tls fit in 63. */}}
{{- define "imagelock.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "imagelock.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "imagelock.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "imagelock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagelock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "imagelock.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "imagelock.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "imagelock.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* "true" when more than one replica runs: they elect a leader through a Lease. */}}
{{- define "imagelock.leaderElection" -}}
{{- if gt (int .Values.replicaCount) 1 -}}true{{- end -}}
{{- end -}}

{{- define "imagelock.leaseName" -}}
{{- default (include "imagelock.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* Object names. */}}
{{- define "imagelock.configName" -}}{{ include "imagelock.fullname" . }}-config{{- end -}}
{{- define "imagelock.webhookServiceName" -}}{{ include "imagelock.fullname" . }}{{- end -}}
{{- define "imagelock.adminServiceName" -}}{{ include "imagelock.fullname" . }}-admin{{- end -}}
{{- define "imagelock.hooksServiceName" -}}{{ include "imagelock.fullname" . }}-hooks{{- end -}}
{{- define "imagelock.certificateName" -}}{{ include "imagelock.fullname" . }}-webhook{{- end -}}

{{- define "imagelock.tlsSecretName" -}}
{{- if eq .Values.tls.mode "existingSecret" -}}
{{- required "tls.mode=existingSecret needs tls.existingSecret (a kubernetes.io/tls Secret)" .Values.tls.existingSecret -}}
{{- else -}}
{{- include "imagelock.fullname" . }}-webhook-tls
{{- end -}}
{{- end -}}

{{- define "imagelock.gitSecretName" -}}
{{- default (printf "%s-git" (include "imagelock.fullname" .)) .Values.git.existingSecret -}}
{{- end -}}

{{- define "imagelock.registrySecretName" -}}
{{- default (printf "%s-registry" (include "imagelock.fullname" .)) .Values.registry.existingSecret -}}
{{- end -}}

{{- define "imagelock.hooksSecretName" -}}
{{- default (printf "%s-hooks" (include "imagelock.fullname" .)) .Values.hooks.existingSecret -}}
{{- end -}}

{{/* "true" when the daemon gets registry credentials. */}}
{{- define "imagelock.registryCredentials" -}}
{{- if or .Values.registry.existingSecret .Values.registry.auths -}}true{{- end -}}
{{- end -}}

{{/* "true" when the daemon gets a passphrase for its SSH key. */}}
{{- define "imagelock.gitSshPassphrase" -}}
{{- if eq .Values.git.auth "ssh" -}}
{{- if .Values.git.existingSecret -}}
{{- if .Values.git.secretKeys.sshPassphrase -}}true{{- end -}}
{{- else if .Values.git.ssh.passphrase -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Where the Secrets are mounted, and so the paths the config file names. One directory per
Secret, mounted whole (no subPath), so that the kubelet's atomic updates reach the daemon.
*/}}
{{- define "imagelock.paths" -}}
config: /etc/imagelock
workdir: /var/lib/imagelock
checkout: /var/lib/imagelock/checkout
home: /home/imagelock
git: /var/run/secrets/imagelock/git
registry: /var/run/secrets/imagelock/registry
hooks: /var/run/secrets/imagelock/hooks
tenants: /var/run/secrets/imagelock/tenants
tls: /var/run/secrets/imagelock/webhook-tls
{{- end -}}

{{/* Checks of value combinations that the schema cannot express; each names the fix. */}}
{{- define "imagelock.validate" -}}
{{- if not .Values.config.repo -}}
{{- fail "config.repo is required: the URL of the config repo (https://..., ssh://... or git@host:path)" -}}
{{- end -}}
{{- if eq .Values.git.auth "token" -}}
{{- if not (or .Values.git.existingSecret .Values.git.token) -}}
{{- fail "git.auth=token needs git.token or git.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.git.auth "ssh" -}}
{{- if not (or .Values.git.existingSecret .Values.git.ssh.privateKey) -}}
{{- fail "git.auth=ssh needs git.ssh.privateKey or git.existingSecret" -}}
{{- end -}}
{{- if not .Values.git.ssh.knownHosts -}}
{{- fail "git.auth=ssh needs git.ssh.knownHosts (e.g. the output of ssh-keyscan <git host>): the daemon refuses SSH hosts it does not know" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.webhook.enabled (eq .Values.tls.mode "existingSecret") -}}
{{- if not .Values.tls.existingSecret -}}
{{- fail "tls.mode=existingSecret needs tls.existingSecret (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if not .Values.tls.caBundle -}}
{{- fail "tls.mode=existingSecret needs tls.caBundle: base64 of the PEM CA that signed the certificate" -}}
{{- end -}}
{{- end -}}
{{- $ports := list (int .Values.admin.port) -}}
{{- if .Values.webhook.enabled -}}{{- $ports = append $ports (int .Values.webhook.port) -}}{{- end -}}
{{- if .Values.hooks.enabled -}}{{- $ports = append $ports (int .Values.hooks.port) -}}{{- end -}}
{{- if ne (len $ports) (len (uniq $ports)) -}}
{{- fail (printf "admin.port, webhook.port and hooks.port must differ (got %v)" $ports) -}}
{{- end -}}
{{- end -}}
