"""The one prompt template, shared by adaptation, synthesis and the classifier."""

TEMPLATE = "a {domain}photo of a {name}"


def class_prompt(name: str, domain: str = "") -> str:
    """`"a {domain}photo of a {name}"`. The domain word gets exactly one trailing space, so both
    "satellite" and "satellite " give "a satellite photo of a ..."."""
    domain = domain.strip()
    return TEMPLATE.format(domain=f"{domain} " if domain else "", name=name)
