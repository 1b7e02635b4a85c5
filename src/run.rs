//! lock and elect: one select loop over lease events, child exit and signals.
