"""Speech output: the RVQ codec over log-mel frames (`codec`) and the Talker that speaks its codes (`talker`)."""
