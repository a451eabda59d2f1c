//! weft-injector: the mutating admission webhook. Built out by the injection issue.
