"""The learning stage (torch): train under torchrun, evaluate, localize, predict."""
