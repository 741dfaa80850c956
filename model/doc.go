// Package model is the machine model of machinefs: the tree of hosts,
// subhosts and groups, and everything that happens to them.
//
// A write becomes an operation (operation.go): admitted or refused as
// busy, given its deadline, run by the first driver of the host's
// driverSet that offers its verb, and ended by a verdict that every
// waiter gets. Stacks (ctys CANCEL) and group fan-out are built on
// operations. Drivers are known only through package machine, and what is
// kept across restarts only through the store.Store interface; rendering
// for the files users read is package view's, serving them package fs's.
// Every change is published as an Event on the tree's bus.
package model
