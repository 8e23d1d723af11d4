// Package policy reads, validates and evaluates sandpit egress policies: which
// HTTP requests an execution's code may make, decided request by request.
//
// A policy arrives as a [policyv1.Policy], either parsed from the operator's
// YAML file ([Parse], [Load]) or sent inline by a caller. [Validate] reports
// every problem with its field path; [Compile] turns a valid policy into an
// immutable [Compiled] whose [Compiled.Decide] answers one request and whose
// [Compiled.CouldAllowHost] answers DNS. [Chain] narrows one policy by others
// so that a narrower source can only take access away.
//
// Hosts and paths are canonicalized only by package canon, which the egress
// proxy uses too: Decide and CouldAllowHost require canonical input and deny
// anything else rather than canonicalize it a second, possibly different,
// way.
//
// The package does no I/O apart from [Load] reading its file.
package policy
