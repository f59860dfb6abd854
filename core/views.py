"""The landing page (the signed-in operator's or customer's dashboard), sign-in, health check."""

from django.contrib.auth import views as auth_views
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

from core.tenancy import caller_for_user


@ensure_csrf_cookie  # the board's hang-up button sends it with its DELETE
def home(request: HttpRequest) -> HttpResponse:
    """Signed in: the dashboard around the live call board. Otherwise the public links."""
    caller = caller_for_user(request.user)
    if caller is None:
        return render(request, "home.html")
    return render(
        request,
        "dashboard.html",
        {
            "caller": caller,
            "who": request.user.get_username(),
            "tenant": "all customers" if caller.is_staff else caller.customer.name,
        },
    )


class SignInView(auth_views.LoginView):
    """Sign-in for operators and customers' members alike (the admin's is staff-only)."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True
    next_page = "home"  # unless ?next= says otherwise


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and database reachability, for load balancers and docker-compose."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})
