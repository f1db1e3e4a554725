"""The privacy lab: attacks run on what an untrusted worker saw (``blindtrain attack``).

The attacker's knowledge is explicit (:class:`~blindtrain.attacks.recovery.Knowledge`): the
transcript(s) of the roles it controls, the architecture and hyper-parameters, and a public split
of the same data.  Ground truth is read only by the scorer, never by an attack.
"""
