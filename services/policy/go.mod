module github.com/sandpit-run/sandpit/services/policy

go 1.26.0

require (
	github.com/sandpit-run/sandpit/gen/go v0.0.0
	golang.org/x/net v0.60.0
	google.golang.org/protobuf v1.36.12
	go.yaml.in/yaml/v3 v3.0.5
)

replace github.com/sandpit-run/sandpit/gen/go => ../../gen/go
