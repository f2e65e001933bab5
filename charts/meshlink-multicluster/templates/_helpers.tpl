{{/* Labels of every object of component `.component`. */}}
{{- define "mc.labels" -}}
app.kubernetes.io/name: meshlink-multicluster
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: meshlink
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{- end }}

{{/* Pod selector of component `.`. */}}
{{- define "mc.selector" -}}
app.kubernetes.io/name: meshlink-multicluster
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/* Image of component `.component`. */}}
{{- define "mc.image" -}}
{{ .ctx.Values.image.registry }}/{{ .component }}:{{ .ctx.Values.image.tag | default .ctx.Chart.AppVersion }}
{{- end }}

{{/* Anti-affinity over hosts (required) and zones (preferred) for pods matching selector `.`. */}}
{{- define "mc.antiAffinity" -}}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
  - labelSelector:
      matchLabels: {{- . | nindent 8 }}
    topologyKey: kubernetes.io/hostname
  preferredDuringSchedulingIgnoredDuringExecution:
  - weight: 100
    podAffinityTerm:
      labelSelector:
        matchLabels: {{- . | nindent 10 }}
      topologyKey: topology.kubernetes.io/zone
{{- end }}
