"""Training: the losses, the Distance Penalty, timestep sampling, the loop and the run set-up."""
