from django.apps import AppConfig


class TrunkingConfig(AppConfig):
    name = "trunking"
    verbose_name = "Trunking"

    def ready(self) -> None:
        from . import signals

        signals.connect()
