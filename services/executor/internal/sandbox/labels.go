package sandbox

// Labels the executor puts on everything it creates in containerd, so that a
// restarted executor can find and remove what a crashed one left behind.
const (
	// LabelManaged marks a container or snapshot as the executor's own.
	LabelManaged = "sandpit.dev/managed"
	// LabelExecution holds the execution id.
	LabelExecution = "sandpit.dev/execution"
	// LabelUserPrefix prefixes the caller's own labels.
	LabelUserPrefix = "sandpit.dev/label."

	managedFilter = `labels."` + LabelManaged + `"`
)
