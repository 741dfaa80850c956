package machine

// ThisMachine is a driver whose machine is the one its own process runs on
// (drivers/local: the agent powering off or rebooting its own machine). A
// command that takes that machine down takes the driver, the model and the
// agent with it, so the driver cannot report the verdict: the model
// publishes that the machine is going down on purpose before the driver
// acts, and the other agents of a cluster read the agent's departure as
// "off" (or, after a reboot, wait for it to come back).
type ThisMachine interface {
	PowerController
	// RunsThisProcess says whether the machine is the one this process
	// runs on; a driver may say no when it acts on another machine.
	RunsThisProcess() bool
}
